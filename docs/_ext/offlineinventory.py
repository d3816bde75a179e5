"""
Sphinx inventories (C{objects.inv}) of the parts of the Python standard
library and of Twisted that udptime uses, made from the installed modules,
so that the API reference links their names to their documentation without
fetching anything: the build needs no network.

A name's address follows the layout of each site: Python's
C{library/MODULE.html#NAME}, Twisted's pydoctor pages C{MODULE.html},
C{MODULE.CLASS.html} and C{MODULE.CLASS.html#NAME}.  A name documented
under another anchor than the one computed here lands on its module's page.

As a Sphinx extension it writes the inventories when the builder starts and
hands them to pydoctor (C{--intersphinx-file}) and to Sphinx's intersphinx,
before C{pydoctor.sphinx_ext.build_apidocs} runs.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

PYTHON_DOCS = "https://docs.python.org/3/"
"""Where Python's documentation lives."""

TWISTED_DOCS = "https://docs.twistedmatrix.com/en/stable/api/"
"""Where Twisted's API reference lives."""

TWISTED_ALSO = (
    "twisted.application.internet",
    "twisted.application.service",
    "twisted.internet.defer",
    "twisted.internet.error",
    "twisted.internet.posixbase",
    "twisted.internet.protocol",
    "twisted.internet.task",
    "twisted.internet.udp",
    "twisted.logger",
    "twisted.python.systemd",
    "twisted.python.usage",
    "twisted.trial.unittest",
)
"""Twisted modules the documentation names without udptime importing them."""

_PAGES = {"ctypes.util": "ctypes"}
"""Standard modules documented on another module's page."""

_CONSTANTS = {"None", "True", "False", "NotImplemented", "Ellipsis"}
_TYPES = {
    "bytes",
    "bytearray",
    "memoryview",
    "str",
    "list",
    "tuple",
    "dict",
    "set",
    "frozenset",
    "range",
}

Entry = tuple[str, str, str]
"""An inventory entry: name, role (C{py:class}), address."""


def importedModules(sources: Iterable[Path]) -> set[str]:
    """
    The modules the Python files C{sources} import, and their parents
    (C{from a.b import c} gives C{a}, C{a.b} and, where it is a module,
    C{a.b.c}).
    """
    found: set[str] = set()
    for source in sources:
        tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
                names += [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                found.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return {name for name in found if _importable(name)}


_NEVER_IMPORTED = {"__future__", "twisted.internet.reactor"}
"""Modules whose import does something: the reactor's installs one."""


def _importable(name: str) -> bool:
    if name in _NEVER_IMPORTED:
        return False
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _public(names: Iterable[str]) -> list[str]:
    return sorted(name for name in names if not name.startswith("_"))


def _members(module: Any) -> Iterator[tuple[str, Any]]:
    """
    The public names a module documents: those it defines, and those it
    exports with C{__all__}.
    """
    exported = set(getattr(module, "__all__", ()))
    for name in _public(vars(module)):
        value = vars(module)[name]
        if inspect.ismodule(value):
            continue
        defined = getattr(value, "__module__", None) == module.__name__
        if defined or name in exported:
            yield name, value


def _classMembers(cls: type) -> Iterator[tuple[str, str]]:
    """
    The public names a class defines, each with its role.
    """
    for member in _public(vars(cls)):
        yield member, "py:method" if callable(vars(cls)[member]) else "py:attribute"


def _role(value: Any) -> str:
    if inspect.isclass(value):
        return "py:class"
    if callable(value):
        return "py:function"
    return "py:data"


def pythonEntries(modules: Iterable[str]) -> list[Entry]:
    """
    Inventory entries for the built-in names and for the standard modules
    among C{modules}, as Python's documentation lays them out.
    """
    entries: list[Entry] = []
    for name in _public(vars(builtins)):
        value = vars(builtins)[name]
        if name in _CONSTANTS:
            entries.append((name, "py:data", "library/constants.html#$"))
        elif inspect.isclass(value) and issubclass(value, BaseException):
            entries.append((name, "py:exception", "library/exceptions.html#$"))
        elif name in _TYPES:
            entries.append((name, "py:class", "library/stdtypes.html#$"))
        elif callable(value):
            entries.append((name, _role(value), "library/functions.html#$"))
    standard = sys.stdlib_module_names
    for moduleName in sorted(modules):
        if moduleName.split(".")[0] not in standard:
            continue
        module = importlib.import_module(moduleName)
        page = "library/" + _PAGES.get(moduleName, moduleName).lower() + ".html"
        entries.append((moduleName, "py:module", f"{page}#module-$"))
        for name, value in _members(module):
            full = f"{moduleName}.{name}"
            entries.append((full, _role(value), f"{page}#$"))
            if inspect.isclass(value):
                for member, role in _classMembers(value):
                    entries.append((f"{full}.{member}", role, f"{page}#$"))
    return entries


def twistedEntries(modules: Iterable[str]) -> list[Entry]:
    """
    Inventory entries for the Twisted modules among C{modules}, as
    pydoctor lays out Twisted's API reference.
    """
    entries: list[Entry] = []
    for moduleName in sorted(modules):
        if moduleName.split(".")[0] != "twisted":
            continue
        module = importlib.import_module(moduleName)
        entries.append((moduleName, "py:module", f"{moduleName}.html"))
        for name, value in _members(module):
            full = f"{moduleName}.{name}"
            if inspect.isclass(value):
                entries.append((full, "py:class", f"{full}.html"))
                for member, role in _classMembers(value):
                    entries.append((f"{full}.{member}", role, f"{full}.html#{member}"))
            else:
                entries.append((full, _role(value), f"{moduleName}.html#{name}"))
    return entries


def inventory(project: str, version: str, entries: Iterable[Entry]) -> bytes:
    """
    A Sphinx inventory, version 2, of C{entries}.
    """
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = [
        f"{name} {role} 1 {address} -\n" for name, role, address in sorted(set(entries))
    ]
    return header.encode("utf-8") + zlib.compress("".join(lines).encode("utf-8"))


def writeInventories(sources: Iterable[Path], directory: Path) -> dict[str, Path]:
    """
    Write the inventories of Python and of Twisted for the modules C{sources}
    import (and L{TWISTED_ALSO}) into C{directory}.

    @return: each inventory's path, by the address it is for.
    """
    import twisted

    modules = importedModules(sources) | set(TWISTED_ALSO)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for url, project, projectVersion, entries in [
        (PYTHON_DOCS, "Python", version, pythonEntries(modules)),
        (TWISTED_DOCS, "Twisted", twisted.__version__, twistedEntries(modules)),
    ]:
        path = directory / f"{project.lower()}.inv"
        path.write_bytes(inventory(project, projectVersion, entries))
        written[url] = path
    return written


def _builderInited(app: Any) -> None:
    """
    Write the inventories into the build's doctree directory, and give them
    to pydoctor and to intersphinx.
    """
    config = app.config
    sources = [Path(app.srcdir, path) for path in config.offline_inventory_sources]
    files = [path for source in sources for path in sorted(source.rglob("*.py"))]
    written = writeInventories(files, Path(app.doctreedir) / "inventories")
    names = {PYTHON_DOCS: "python", TWISTED_DOCS: "twisted"}
    arguments = [f"--intersphinx-file={path}::{url}" for url, path in written.items()]
    if isinstance(config.pydoctor_args, dict):
        for run in config.pydoctor_args.values():
            run.extend(arguments)
    elif config.pydoctor_args is not None:
        config.pydoctor_args = [*config.pydoctor_args, *arguments]
    mapping = getattr(config, "intersphinx_mapping", None)
    if mapping is not None:
        for url, path in written.items():
            mapping[names[url]] = (names[url], (url, (str(path),)))


def setup(app: Any) -> dict[str, Any]:
    """
    The Sphinx extension: C{offline_inventory_sources} lists the folders
    (relative to the documentation's) whose Python files' imports decide
    what goes into the inventories.
    """
    app.add_config_value("offline_inventory_sources", [], "env")
    # Before pydoctor.sphinx_ext.build_apidocs (490) and intersphinx (500).
    app.connect("builder-inited", _builderInited, priority=400)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
