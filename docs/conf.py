"""Sphinx configuration of the flowd documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors;
tests/test_docs.py does the same).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Document this checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowd

project = "flowd"
author = "the flowd authors"
copyright = "the flowd authors; MIT License"
release = flowd.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
autodoc_typehints = "signature"
exclude_patterns = ["_build"]
default_role = "literal"
html_theme = "alabaster"
html_title = f"flowd {release}"
html_theme_options = {"description": "Jobs on Redis Streams for synchronous Python"}
