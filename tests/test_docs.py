"""The Sphinx site builds without a warning, and its API reference covers the public API."""

from __future__ import annotations

import os
import re
from pathlib import Path

import flowd
from tests.helpers import run_python

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_sphinx_build_passes_with_warnings_as_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FLASK_"))}
    out = tmp_path / "html"
    args = ["-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    result = run_python(args, env=env, cwd=None, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    assert (out / "index.html").exists()
    api = (out / "api.html").read_text()
    for anchor in ("flowd.Queue", "flowd.contrib.django.enqueue", "flowd.contrib.flask.Flowd"):
        assert f'id="{anchor}"' in api, anchor


def test_api_reference_documents_every_public_name() -> None:
    api = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. auto(?:class|function|data|exception):: (\w+)", api, re.M))
    public = {name for name in flowd.__all__ if not name.startswith("_")}
    assert public - documented == set(), "add these to docs/api.rst"
