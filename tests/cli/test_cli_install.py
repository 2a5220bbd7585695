"""The first commands of README, as a newcomer runs them: each in a fresh virtualenv.

- the built wheel installs with the ``embedded`` extra and ``flowd demo`` runs;
- ``pip install '.[docs]'`` then README's docs command builds the docs.

Each takes about a minute (pip's cache saves the downloads).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

import flowd
from tests.helpers import run_command

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.rst").read_text()
DISTRIBUTION = "flowd-queue"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = run_command(args, cwd=cwd, env=env, timeout=timeout)
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def fresh_venv(where: Path) -> Path:
    """A new virtualenv at ``where``; its bin/ directory."""
    run([sys.executable, "-m", "venv", str(where)], cwd=where.parent)
    return where / "bin"


def clean_env(bin_dir: Path) -> dict[str, str]:
    """The environment of a new shell with the virtualenv activated: no FLOWD_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWD_", "PYTHON"))}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    return env


def copy_of_the_checkout(to: Path) -> Path:
    """The checkout's files, without build output or caches (as a fresh clone has them)."""
    ignore = shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", "_build", ".*_cache", ".hypothesis"
    )
    return Path(shutil.copytree(REPO, to, ignore=ignore))


@pytest.mark.timeout(900)
def test_the_wheel_installs_with_embedded_in_a_fresh_venv_and_flowd_demo_runs(
    tmp_path: Path,
) -> None:
    # Given the sdist and wheel built from a copy of the checkout, checked by twine
    clone = copy_of_the_checkout(tmp_path / "clone")
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), "."], cwd=clone)
    wheels = list(dist.glob("flowd_queue-*.whl"))
    sdists = list(dist.glob("flowd_queue-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    checked = run([sys.executable, "-m", "twine", "check", *map(str, dist.iterdir())], cwd=dist)
    assert checked.count("PASSED") == 2, checked

    # When the wheel is installed with the embedded extra in a fresh virtualenv
    bin_dir = fresh_venv(tmp_path / "venv")
    env = clean_env(bin_dir)
    run([str(bin_dir / "pip"), "install", "--quiet", f"{wheels[0]}[embedded]"], tmp_path, env)

    # Then `flowd --version` names the version and the distribution
    version = run([str(bin_dir / "flowd"), "--version"], tmp_path, env)
    assert version.strip() == f"flowd {flowd.__version__} ({DISTRIBUTION})"
    # And `flowd demo`, outside the checkout, runs on a private server and sums up
    demo = run_command(
        [str(bin_dir / "flowd"), "demo", "--jobs", "2000"], env=env, cwd=tmp_path, timeout=300
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert re.search(
        r"^started a private redis-server \(\S+\) on redis://127\.0\.0\.1:", demo.stdout, re.M
    )
    assert re.search(r"^   jobs processed   2000: ", demo.stdout, re.M), demo.stdout
    assert "   dead letters     2 " in demo.stdout
    assert "   still pending    0\n" in demo.stdout
    assert "   clean stop       True\n" in demo.stdout
    assert "stopped the private redis-server and removed its files" in demo.stdout
    # (the installed package ran, not the checkout's)
    where = run(
        [str(bin_dir / "python"), "-c", "import flowd; print(flowd.__file__)"], tmp_path, env
    )
    assert where.startswith(str(tmp_path / "venv")), where


def test_readme_starts_with_the_commands_that_work_from_a_clone() -> None:
    install = README.index("Installation\n------------")
    first_block = README[install : README.index("Quick start\n")]
    assert "pip install '.[embedded]' && flowd demo" in first_block
    assert "pip install -e '.[test]' && python -m pytest" in first_block
    assert f"pip install {DISTRIBUTION}" in README
    assert "pip install flowd\n" not in README and "'flowd[" not in README


def docs_command() -> str:
    """README's command that builds the docs (the line that starts with sphinx-build)."""
    commands = re.findall(r"^\s+(sphinx-build .+)$", README, re.M)
    assert len(commands) == 1, commands
    return str(commands[0]).split("#", 1)[0].strip()


@pytest.mark.timeout(900)
def test_the_docs_extra_in_a_fresh_venv_builds_the_docs_with_readmes_command(
    tmp_path: Path,
) -> None:
    # Given a fresh virtualenv with only the docs extra of a copy of the checkout
    clone = copy_of_the_checkout(tmp_path / "clone")
    bin_dir = fresh_venv(tmp_path / "venv")
    env = clean_env(bin_dir)
    run([str(bin_dir / "pip"), "install", "--quiet", ".[docs]"], clone, env)

    # When README's docs command runs there, as written
    command = docs_command()
    assert command.startswith("sphinx-build -W ")
    run(["sh", "-c", command], clone, env, timeout=300)

    # Then the site is built, API reference included
    out = clone / command.split()[-1]
    assert (out / "index.html").exists()
    assert 'id="flowd.Queue"' in (out / "api.html").read_text()
