"""
Sphinx configuration of udptime's documentation.

Build it, from the top of a checkout, with the C{docs} extra installed
(C{pip install -e '.[docs]'})::

    sphinx-build -W --keep-going -n -b html docs docs/_build/html

The API reference comes from the epytext docstrings through pydoctor, run by
its Sphinx extension into C{docs/_build/html/api/}.  Nothing is fetched: the
links to Python's and Twisted's documentation come from inventories made
from the installed modules (C{_ext/offlineinventory.py}).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))

import udptime  # noqa: E402

project = "udptime"
author = "the udptime developers"
copyright = "2026, the udptime developers"
version = release = udptime.__version__

extensions = [
    "sphinx.ext.intersphinx",
    "pydoctor.sphinx_ext.build_apidocs",
    # Local extensions, in _ext/.
    "optionlists",
    "offlineinventory",
    "diagrams",
    "internallinks",
    # The benchmark's published results (docs/data/) as tables and charts.
    "benchreport",
]

root_doc = "index"
exclude_patterns = ["_build", "_generated", "examples"]
templates_path: list[str] = []
default_role = "literal"
nitpicky = True
highlight_language = "none"

# The links to other documentation come from local inventories only: never
# fetch one (the build runs without network).
intersphinx_mapping: dict[str, tuple[str, tuple[str, ...]]] = {}
intersphinx_timeout = 1

# pydoctor writes the API reference into the HTML output's api/ folder and
# an inventory that the pages' :py: references resolve against.
pydoctor_args = [
    "--project-name=udptime",
    f"--project-version={version}",
    "--docformat=epytext",
    f"--project-base-dir={ROOT}",
    "--html-output={outdir}/api",
    str(ROOT / "udptime"),
]
pydoctor_url_path = "api/"
# Every relative link of the output is checked (internallinks); the
# fragments of pydoctor's own in-page links are its business.
internal_links_skip_fragments = "api/"
offline_inventory_sources = ["../udptime"]

html_theme = "alabaster"
html_title = f"udptime {version}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "A concurrent UDP time service for Twisted",
    "fixed_sidebar": False,
    "page_width": "1160px",
    "sidebar_width": "230px",
    "show_relbars": True,
}
html_sidebars = {
    "**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]
}
