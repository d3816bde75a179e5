"""
Check the links inside the built HTML, without the network: every relative
link of every page (the API reference's too) must name a file of the
output, and every fragment a page links to in the manual's own pages must be
an anchor of its target.  A broken one is a Sphinx warning, so a build with
C{-W} fails.

Links to other sites are not checked: that would need the internet (which
C{sphinx-build -b linkcheck} uses).
"""

from __future__ import annotations

import posixpath
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


class _Links(HTMLParser):
    """
    The links (C{href}, C{src}) and the anchors (C{id}, C{name}) of a page.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("href", "src"):
                self.links.append(value)
            elif name == "id" or (name == "name" and tag == "a"):
                self.anchors.add(value)


def _parse(path: Path) -> _Links:
    links = _Links()
    links.feed(path.read_text(encoding="utf-8", errors="replace"))
    return links


def brokenLinks(outdir: Path, checkFragmentsUnder: str = "") -> list[str]:
    """
    The broken relative links of the HTML files under C{outdir}, as
    C{"page: link"} lines.

    @param checkFragmentsUnder: fragments are checked only on pages whose
        path (relative to C{outdir}) does not start with this (C{"api/"}:
        leave pydoctor's own in-page links alone); C{""} checks them all.
    """
    pages = {
        path.relative_to(outdir).as_posix(): path for path in outdir.rglob("*.html")
    }
    parsed: dict[str, _Links] = {}

    def links(name: str) -> _Links:
        if name not in parsed:
            parsed[name] = _parse(pages[name])
        return parsed[name]

    broken = []
    for name in sorted(pages):
        checkFragments = not (
            checkFragmentsUnder and name.startswith(checkFragmentsUnder)
        )
        for link in links(name).links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith("//"):
                continue
            target = name
            if parts.path:
                target = posixpath.normpath(
                    posixpath.join(posixpath.dirname(name), unquote(parts.path))
                )
                if target.endswith("/") or (outdir / target).is_dir():
                    target = posixpath.join(target, "index.html")
                if not (outdir / target).exists():
                    broken.append(f"{name}: {link}")
                    continue
            if (
                checkFragments
                and parts.fragment
                and target in pages
                and unquote(parts.fragment) not in links(target).anchors
            ):
                broken.append(f"{name}: {link}")
    return broken


def _buildFinished(app: Any, exception: BaseException | None) -> None:
    if exception is not None or app.builder is None or app.builder.name != "html":
        return
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    for problem in brokenLinks(
        Path(app.outdir), app.config.internal_links_skip_fragments
    ):
        logger.warning("broken internal link: %s", problem)


def setup(app: Any) -> dict[str, Any]:
    """
    The Sphinx extension: check the links once the HTML is written (after
    pydoctor's extension has moved the API reference into place).
    """
    app.add_config_value("internal_links_skip_fragments", "", "html")
    app.connect("build-finished", _buildFinished, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
