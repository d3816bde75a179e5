"""
Charts of the benchmark's results, drawn with matplotlib (the C{docs}
extra) on its Agg canvas, and saved as PNG files that depend only on the
data: no date, no software version in their metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter
from report import micro

# One colour per part of a chart, the same in every chart.
UDPTIME = "#1f77b4"
OTHER = "#9aa5b1"
USER = "#1f77b4"
KERNEL = "#ff7f0e"
IDLE = "#2ca02c"
LOADED = "#d62728"
LINES = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _figure(width: float = 8.0, height: float = 4.0) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _barHeight(count: int) -> float:
    return max(2.5, 0.32 * count + 1.2)


def throughputChart(results: dict[str, Any]) -> Figure:
    """
    Requests per second each server answered in the closed loop,
    udptime's bars in colour.
    """
    rows = results["rows"]
    figure = _figure(height=_barHeight(len(rows)))
    axes = figure.add_subplot()
    positions = list(range(len(rows)))[::-1]
    values = [row["rps"] or 0 for row in rows]
    colours = [UDPTIME if row["kind"] == "udptime" else OTHER for row in rows]
    bars = axes.barh(positions, values, color=colours)
    axes.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
    axes.set_yticks(positions, [row["key"] for row in rows], fontsize=8)
    axes.set_xlabel("requests per second (closed loop, median of the rounds)")
    axes.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes.set_xlim(0, max(values, default=1) * 1.18 or 1)
    axes.set_title("Throughput")
    axes.grid(axis="x", alpha=0.3)
    return figure


def cpuChart(results: dict[str, Any]) -> Figure:
    """
    Each server's CPU time per request, user space and kernel stacked, with
    the scheduler's total marked.
    """
    rows = results["rows"]
    figure = _figure(height=_barHeight(len(rows)))
    axes = figure.add_subplot()
    positions = list(range(len(rows)))[::-1]
    user = [row["user_us"] or 0 for row in rows]
    kernel = [row["kernel_us"] or 0 for row in rows]
    total = [row["cpu_us"] or 0 for row in rows]
    axes.barh(positions, user, color=USER, label="user space")
    axes.barh(positions, kernel, left=user, color=KERNEL, label="kernel")
    axes.scatter(
        total,
        positions,
        marker="|",
        s=200,
        color="black",
        zorder=3,
        label="total (scheduler)",
    )
    axes.set_yticks(positions, [row["key"] for row in rows], fontsize=8)
    axes.set_xlabel("server CPU µs per request (closed loop)")
    axes.set_title("CPU time per request")
    figure.legend(loc="outside lower center", ncol=3, fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    return figure


def roughtimeChart(results: dict[str, Any]) -> Figure:
    """
    For the Roughtime servers, measured in the same rounds: requests per
    second and server CPU µs per request in the closed loop, the median of
    the rounds as a bar and each round as a dot.
    """
    return closedLoopChart(results, "roughtime", "Roughtime")


def ntsChart(results: dict[str, Any]) -> Figure:
    """
    For the NTS servers, measured in the same rounds: as L{roughtimeChart}.
    """
    return closedLoopChart(results, "nts", "NTP with NTS (one request replayed)")


def closedLoopChart(results: dict[str, Any], protocol: str, title: str) -> Figure:
    """
    For the servers of C{protocol}, measured in the same rounds: requests
    per second and server CPU µs per request in the closed loop, the median
    of the rounds as a bar and each round as a dot.
    """
    rows = [row for row in results["rows"] if row["protocol"] == protocol]
    rounds: dict[str, list[dict[str, Any]]] = {}
    for each in results.get("rounds", []):
        for result in each:
            rounds.setdefault(result["key"], []).append(result)
    figure = _figure(width=9.0, height=_barHeight(len(rows)) + 0.6)
    panels = figure.subplots(1, 2, sharey=True)
    positions = list(range(len(rows)))[::-1]
    colours = [UDPTIME if row["kind"] == "udptime" else OTHER for row in rows]
    for axes, field, label, shown in (
        (panels[0], "rps", "requests per second", "{:,.0f}"),
        (panels[1], "cpu_us", "server CPU µs per request", "{:.0f}"),
    ):
        values = [row[field] or 0 for row in rows]
        axes.barh(positions, values, color=colours)
        for position, value in zip(positions, values, strict=True):
            # The median at the panel's right edge, clear of the dots.
            axes.text(
                0.98,
                position,
                shown.format(value),
                transform=axes.get_yaxis_transform(),
                ha="right",
                va="center",
                fontsize=9,
            )
        highest = max([*values, 1.0])
        for position, row in zip(positions, rows, strict=True):
            measured = [r[field] for r in rounds.get(row["key"], [])]
            highest = max([highest, *measured])
            axes.scatter(
                measured,
                [position] * len(measured),
                color="black",
                s=10,
                zorder=3,
            )
        axes.set_xlabel(label)
        axes.xaxis.set_major_formatter(StrMethodFormatter(shown.replace("{", "{x")))
        axes.set_xlim(0, highest * 1.3)
        axes.grid(axis="x", alpha=0.3)
    panels[0].set_yticks(positions, [row["label"] for row in rows], fontsize=8)
    figure.suptitle(
        f"{title} in a closed loop, the servers taking turns in each round"
        " (bar: median; dots: each round)",
        fontsize=10,
    )
    return figure


def latencyChart(results: dict[str, Any]) -> Figure:
    """
    p50 and p99 latency against the offered rate, one panel per protocol,
    one line per server (solid: p50, dashed: p99); the servers measured in
    closed loops only (Roughtime, NTS) have none.
    """
    rows = [row for row in results["rows"] if not row.get("workers") and row["latency"]]
    protocols = list(dict.fromkeys(row["protocol"] for row in rows))
    figure = _figure(width=9.0, height=6.0)
    panels = figure.subplots(1, max(len(protocols), 1), squeeze=False)[0]
    for axes, protocol in zip(panels, protocols, strict=False):
        mine = [row for row in rows if row["protocol"] == protocol]
        for n, row in enumerate(mine):
            colour = LINES[n % len(LINES)]
            rates = [entry["rate"] for entry in row["latency"]]
            for key, style in (("p50_us", "-"), ("p99_us", "--")):
                values = [entry[key] for entry in row["latency"]]
                axes.plot(
                    rates,
                    [float("nan") if v is None else v for v in values],
                    style,
                    marker="o",
                    markersize=3,
                    color=colour,
                    label=row["label"] if key == "p50_us" else None,
                )
        axes.set_yscale("log")
        axes.set_xlabel("offered requests per second")
        axes.set_xticks(results["settings"]["rates"])
        axes.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        axes.set_ylabel("latency µs (solid p50, dashed p99)")
        axes.set_title(protocol)
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    return figure


def accuracyGroups(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """
    The bars of the accuracy chart: for each server and client mode, its
    name (with how many samples chronyd used as interleaved, idle and
    loaded) and its figures (C{offset}, C{delay}) by load; then, where
    chronyd used any reply as interleaved, the same for those replies
    alone.
    """
    figures: dict[tuple[str, str], dict[str, dict[str, float | None]]] = {}
    used: dict[tuple[str, str], list[str]] = {}
    for row in results["rows"]:
        group = (row["label"], row["mode"])
        figures.setdefault(group, {})[row["load"]] = {
            "offset": row["median_abs_offset_us"],
            "delay": row["median_delay_us"],
        }
        used.setdefault(group, []).append(
            f"{row['load']} {row['interleaved']}/{row['accepted']}"
        )
        if row["interleaved"]:
            only = (row["label"], f"{row['mode']}, interleaved replies only")
            figures.setdefault(only, {})[row["load"]] = {
                "offset": row["interleaved_median_abs_offset_us"],
                "delay": row["interleaved_median_delay_us"],
            }
    groups = []
    for (label, mode), loads in figures.items():
        name = f"{label}\n{mode}"
        if mode == "xleave" and (label, mode) in used:
            name += "\ninterleaved: " + ", ".join(used[label, mode])
        groups.append((name, loads))
    return groups


def accuracyChart(results: dict[str, Any]) -> Figure:
    """
    Median |offset| and median delay per server and client mode, idle and
    loaded, with how many of the samples chronyd used as interleaved, and
    the interleaved replies alone where there were any.
    """
    groups = accuracyGroups(results)
    figure = _figure(width=10.0, height=_barHeight(2 * len(groups)))
    panels = figure.subplots(1, 2, sharey=True)
    height = 0.38
    positions = list(range(len(groups)))[::-1]
    for axes, key, name in (
        (panels[0], "offset", "median |offset| µs"),
        (panels[1], "delay", "median delay µs"),
    ):
        for shift, load, colour in (
            (height / 2, "idle", IDLE),
            (-height / 2, "loaded", LOADED),
        ):
            values = [loads.get(load, {}).get(key) for _, loads in groups]
            bars = axes.barh(
                [n + shift for n in positions],
                [v or 0.0 for v in values],
                height,
                color=colour,
                label=load,
            )
            axes.bar_label(
                bars, labels=[micro(v) for v in values], padding=2, fontsize=7
            )
        axes.set_xscale("symlog", linthresh=1.0)
        axes.set_xlabel(f"{name} (logarithmic above 1)")
        axes.grid(axis="x", alpha=0.3)
        axes.margins(x=0.25)
    panels[0].set_yticks(positions, [name for name, _ in groups], fontsize=8)
    figure.legend(
        *panels[0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=2,
        fontsize=8,
    )
    figure.suptitle("chronyd -Q against each server")
    return figure


# Each chart: the kind of results it reads, and how it is drawn.
def soakChart(results: dict[str, Any]) -> Figure:
    """
    The soak run over time: the resident memory and open descriptors of the
    supervisor and its workers together, and the share of the polite
    clients' requests answered, with the worker kills marked.
    """
    samples = results["results"]["samples"]
    minutes = [sample["t"] / 60 for sample in samples]
    figure = _figure(height=6.0)
    memory, descriptors, answers = figure.subplots(3, 1, sharex=True)
    memory.plot(minutes, [s["rss_kb_total"] / 1024 for s in samples], color=UDPTIME)
    memory.set_ylabel("RSS, MiB")
    memory.set_ylim(bottom=0)
    descriptors.plot(minutes, [s["fds_total"] for s in samples], color=KERNEL)
    descriptors.set_ylabel("open fds")
    descriptors.set_ylim(bottom=0)
    rates = [s["polite_answer_rate"] for s in samples]
    answers.plot(minutes, [float("nan") if r is None else r for r in rates], color=IDLE)
    answers.set_ylabel("answered")
    answers.set_ylim(0, 1.05)
    answers.set_xlabel("minutes (supervisor and 2 workers; dotted: a worker killed)")
    for axes in (memory, descriptors, answers):
        for kill in results["results"]["kills"]:
            axes.axvline(kill["t"] / 60, color=LOADED, linestyle=":", linewidth=1)
        axes.grid(alpha=0.3)
    memory.set_title("Soak run")
    return figure


CHARTS: dict[str, tuple[str, Callable[[dict[str, Any]], Figure]]] = {
    "throughput": ("throughput", throughputChart),
    "throughput-cpu": ("throughput", cpuChart),
    "latency": ("throughput", latencyChart),
    "roughtime": ("throughput", roughtimeChart),
    "nts": ("throughput", ntsChart),
    "accuracy": ("accuracy", accuracyChart),
    "soak": ("soak", soakChart),
}


def save(figure: Figure, path: Path) -> None:
    """
    Save C{figure} as a PNG file at C{path}, with no metadata but the
    image's own, so that the same data gives the same bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
