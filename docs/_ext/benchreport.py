"""
A Sphinx extension that shows the benchmark's published results, the
JSON files in C{docs/data/} that C{bench/run.py ... --publish} writes:

    .. bench-conditions:: throughput

       When, from which commit, on what machine, with which command and
       settings the results of that kind were measured, and how busy the
       machine was.

    .. bench-table:: throughput

       A table (C{throughput}, C{latency}, C{workers}, C{accuracy}: see
       C{bench/report.py}).

    .. bench-chart:: throughput-cpu

       A chart (C{throughput}, C{throughput-cpu}, C{latency}, C{accuracy}:
       see C{bench/charts.py}), drawn with matplotlib at build time into
       C{_generated/benchreport/} under the source directory.

The tables and charts are made by the benchmark's own modules, so that
the terminal and the documentation show the same figures; a page is
rebuilt when its data or those modules change, or when a chart it shows
is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.docutils import SphinxDirective

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import results  # noqa: E402

CHARTS = "_generated/benchreport"


def charted(env: BuildEnvironment) -> dict[str, set[str]]:
    """
    The charts each document shows, as paths relative to the source
    directory, kept in the build environment.
    """
    found: dict[str, set[str]] | None = getattr(env, "benchreport_charts", None)
    if found is None:
        found = {}
        env.benchreport_charts = found  # type: ignore[attr-defined]
    return found


class BenchDirective(SphinxDirective):
    """
    A directive that shows one kind of published results.
    """

    required_arguments = 1
    option_spec = {"data": directives.unchanged}
    """C{:data: NAME}: read C{NAME.json} of the published results rather
    than the file of the kind the table or chart reads (results published
    with C{bench/run.py publish --as NAME})."""

    def results(self, kind: str) -> dict[str, Any]:
        """
        The published results of C{kind}, noted as a dependency of the
        document.

        @raise docutils.parsers.rst.DirectiveError: when they cannot be
            read.
        """
        name = self.options.get("data") or kind
        path = Path(self.env.srcdir) / self.config.benchreport_data / f"{name}.json"
        self.env.note_dependency(str(path))
        self.env.note_dependency(report.__file__)
        try:
            return results.read(path)
        except (OSError, ValueError) as e:
            raise self.error(f"benchmark results: {e}") from None

    def known(self, names: dict[str, Any], what: str) -> str:
        """
        The directive's argument, one of C{names}.

        @raise docutils.parsers.rst.DirectiveError: when it is not.
        """
        name: str = self.arguments[0]
        if name not in names:
            raise self.error(f"no benchmark {what} {name!r}; known: {', '.join(names)}")
        return name


def paragraph(text: str) -> nodes.paragraph:
    """
    A paragraph of plain text.
    """
    return nodes.paragraph(text, text)


def tableNode(table: report.Table) -> nodes.table:
    """
    C{table} as a docutils table, its header as the table's head.
    """
    group = nodes.tgroup(cols=len(table.header))
    for _ in table.header:
        group += nodes.colspec(colwidth=1)

    def line(cells: tuple[str, ...], code: frozenset[int]) -> nodes.row:
        row = nodes.row()
        for n, cell in enumerate(cells):
            if n in code and cell != "-":
                content = nodes.paragraph("", "", nodes.literal(cell, cell))
            else:
                content = paragraph(cell)
            row += nodes.entry("", content)
        return row

    head = nodes.thead()
    head += line(table.header, frozenset())
    body = nodes.tbody()
    for cells in table.rows:
        body += line(cells, table.code)
    group += head
    group += body
    node = nodes.table(classes=["bench-table"])
    node += group
    return node


class BenchTable(BenchDirective):
    """
    C{.. bench-table:: NAME}: a table of L{report.TABLES}.
    """

    def run(self) -> list[nodes.Node]:
        name = self.known(report.TABLES, "table")
        kind, make = report.TABLES[name]
        table = make(self.results(kind))
        if not table.rows:
            return [paragraph("The published results have no server of this table.")]
        return [tableNode(table)]


class BenchConditions(BenchDirective):
    """
    C{.. bench-conditions:: KIND}: the conditions of the published results
    of C{KIND}, as a field list.
    """

    def run(self) -> list[nodes.Node]:
        kind = self.known(dict.fromkeys(results.KINDS), "kind of results")
        fields = nodes.field_list()
        for name, value in report.conditions(self.results(kind)):
            body = (
                nodes.paragraph("", "", nodes.literal(value, value))
                if name in report.CODE_FIELDS
                else paragraph(value)
            )
            fields += nodes.field(
                "", nodes.field_name(name, name), nodes.field_body("", body)
            )
        return [fields]


class BenchChart(BenchDirective):
    """
    C{.. bench-chart:: NAME}: a chart of L{charts.CHARTS}, drawn into
    L{CHARTS} under the source directory.
    """

    def run(self) -> list[nodes.Node]:
        import charts

        name = self.known(charts.CHARTS, "chart")
        kind, make = charts.CHARTS[name]
        data = self.results(kind)
        self.env.note_dependency(charts.__file__)
        relative = f"{CHARTS}/{name}.png"
        charts.save(make(data), Path(self.env.srcdir) / relative)
        charted(self.env).setdefault(self.env.docname, set()).add(relative)
        alt = " ".join((make.__doc__ or name).split())
        return [nodes.image(uri=f"/{relative}", alt=alt, classes=["bench-chart"])]


def purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    """
    Forget the charts of a document about to be read again.
    """
    charted(env).pop(docname, None)


def merge(
    app: Sphinx,
    env: BuildEnvironment,
    docnames: set[str],
    other: BuildEnvironment,
) -> None:
    """
    Take the charts of the documents a parallel reader read.
    """
    mine, theirs = charted(env), charted(other)
    for docname in docnames:
        if docname in theirs:
            mine[docname] = theirs[docname]


def missingCharts(
    app: Sphinx,
    env: BuildEnvironment,
    added: set[str],
    changed: set[str],
    removed: set[str],
) -> list[str]:
    """
    The documents to read again because a chart they show is missing.
    """
    source = Path(env.srcdir)
    return [
        docname
        for docname, paths in charted(env).items()
        if any(not (source / path).exists() for path in paths)
    ]


def setup(app: Sphinx) -> dict[str, Any]:
    """
    Register the directives and the configuration value
    C{benchreport_data}, the directory of the published results relative
    to the source directory (C{data}).
    """
    app.add_config_value("benchreport_data", "data", "env", types=[str])
    app.add_directive("bench-table", BenchTable)
    app.add_directive("bench-chart", BenchChart)
    app.add_directive("bench-conditions", BenchConditions)
    app.connect("env-purge-doc", purge)
    app.connect("env-merge-info", merge)
    app.connect("env-get-outdated", missingCharts)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
