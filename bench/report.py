"""
Reports of the benchmark's results: tables (as aligned text for the
terminal; C{docs/_ext/benchreport.py} turns the same tables into the
documentation's), the conditions of a run, and the goals udptime is
measured against.

Every function here reads a results file's data (L{results}) and nothing
else: no clock, no machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Table:
    """
    A table of text cells.

    @ivar header: the columns' names.
    @ivar rows: the rows, each as many cells as the header.
    @ivar code: the columns whose cells are code (command lines,
        configurations), to be shown as they are.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    code: frozenset[int] = frozenset()

    def text(self) -> str:
        """
        The table as aligned columns: numbers to the right, text to the
        left.
        """
        lines = [self.header, *self.rows]
        columns = range(len(self.header))
        widths = [max(len(line[i]) for line in lines) for i in columns]
        numeric = [
            i > 0 and all(row[i][:1] in "0123456789-(" for row in self.rows)
            for i in columns
        ]
        out = []
        for n, line in enumerate(lines):
            out.append(
                "  ".join(
                    cell.rjust(w) if right else cell.ljust(w)
                    for cell, w, right in zip(line, widths, numeric, strict=True)
                ).rstrip()
            )
            if n == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)


def number(value: float | None, form: str = "{:,.0f}") -> str:
    """
    C{value} formatted with C{form}, or C{-} when there is none.
    """
    return "-" if value is None else form.format(value)


def micro(value: float | None) -> str:
    """
    A time in µs, to two significant decimals below 10 µs.
    """
    if value is None:
        return "-"
    if abs(value) < 1:
        return f"{value:.2f}"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:,.0f}"


def spread(median: float | None, low: float | None, high: float | None) -> str:
    """
    A median with its lowest and highest values, when they differ.
    """
    if median is None:
        return "-"
    if low is None or high is None or low == high:
        return f"{median:.2f}"
    return f"{median:.2f} ({low:.2f}-{high:.2f})"


# --- throughput ----------------------------------------------------------------


def throughputTable(results: dict[str, Any]) -> Table:
    """
    Each server's requests per second, udptime's throughput divided by
    its within each round (median, lowest and highest), and its CPU time
    per request, split between user space and the kernel.
    """
    rows = []
    for row in results["rows"]:
        ratio = row["ratio"]
        rows.append(
            (
                row["key"],
                number(row["rps"]),
                "1.00" if row["baseline"] else spread(**ratio),
                number(row["cpu_us"], "{:.1f}"),
                number(row["user_us"], "{:.1f}"),
                number(row["kernel_us"], "{:.1f}"),
                number(row["server_cpu"] * 100, "{:.0f} %"),
                number(row["loadgen_busy"] * 100, "{:.0f} %"),
            )
        )
    header = (
        "server",
        "requests/s",
        "udptime's ÷ its",
        "CPU µs/request",
        "user µs",
        "kernel µs",
        "server CPU",
        "load generator busy",
    )
    return Table(header, tuple(rows))


def latencyTable(results: dict[str, Any]) -> Table:
    """
    Each server's latency percentiles at each offered rate, and the share
    of requests lost.
    """
    rates = results["settings"]["rates"]
    header = ["server"]
    for rate in rates:
        header += [f"p50 / p99 / p99.9 µs at {rate:,}/s", f"lost at {rate:,}/s"]
    rows = []
    for row in results["rows"]:
        cells = [row["key"]]
        byRate = {entry["rate"]: entry for entry in row["latency"]}
        for rate in rates:
            entry = byRate.get(rate)
            if entry is None:
                cells += ["-", "-"]
                continue
            cells.append(
                " / ".join(number(entry[p]) for p in ("p50_us", "p99_us", "p999_us"))
            )
            cells.append(number(entry["loss"] * 100, "{:.2f} %"))
        rows.append(tuple(cells))
    return Table(tuple(header), tuple(rows))


def workersTable(results: dict[str, Any]) -> Table:
    """
    For udptime's runs with worker processes: the requests each worker
    answered in each round, and how far the busiest or idlest was from an
    even share.
    """
    rows = []
    for row in results["rows"]:
        if "worker_answers" not in row:
            continue
        answers = "; ".join(
            " + ".join(f"{a:,}" for a in each) for each in row["worker_answers"]
        )
        rows.append(
            (
                row["key"],
                number(row["rps"]),
                answers,
                number(row["worker_imbalance"] * 100, "{:.0f} %"),
            )
        )
    header = ("server", "requests/s", "answered by each worker", "imbalance")
    return Table(header, tuple(rows))


def roughtimeTable(results: dict[str, Any]) -> Table:
    """
    For the Roughtime servers: requests per second, CPU time per request,
    and for udptime's the responses per signature (a receive batch shares
    one Merkle tree and one Ed25519 signature).
    """
    rows = []
    for row in results["rows"]:
        if row["protocol"] != "roughtime":
            continue
        rows.append(
            (
                row["key"],
                number(row["rps"]),
                number(row["cpu_us"], "{:.1f}"),
                number(row.get("mean_batch"), "{:.1f}"),
            )
        )
    header = ("server", "requests/s", "CPU µs/request", "responses per signature")
    return Table(header, tuple(rows))


def ntsTable(results: dict[str, Any]) -> Table:
    """
    For the NTS servers: requests per second, udptime's throughput divided
    by theirs within each round, CPU time per request, the replayed
    request's length, the replies' lengths (those the client checked, and
    the shortest and longest of every reply the load generator received:
    an NTS NAK is much shorter than an authenticated reply), and udptime's
    NTS counters over the rounds.
    """
    rows = []
    for row in results["rows"]:
        if row["protocol"] != "nts":
            continue
        received = row.get("reply_bytes")
        counters = row.get("nts_counters")
        rows.append(
            (
                row["key"],
                number(row["rps"]),
                "1.00" if row["baseline"] else spread(**row["ratio"]),
                number(row["cpu_us"], "{:.1f}"),
                number(row.get("request_bytes")),
                ", ".join(str(n) for n in row.get("checked_reply_bytes", []))
                + f" ({row.get('checked_replies', 0)} checked)",
                "-" if not received else " to ".join(str(n) for n in received),
                "-"
                if counters is None
                else " / ".join(
                    f"{counters.get(name, 0):,}"
                    for name in ("authenticated", "naks", "badAuthenticators")
                ),
            )
        )
    header = (
        "server",
        "requests/s",
        "udptime's ÷ its",
        "CPU µs/request",
        "request bytes",
        "checked reply bytes",
        "reply bytes under load",
        "authenticated / NAKs / bad authenticators",
    )
    return Table(header, tuple(rows))


# --- accuracy --------------------------------------------------------------------


def accuracyTable(results: dict[str, Any]) -> Table:
    """
    For each NTP server, client mode and load: the samples chronyd took
    and used, and in interleaved mode how many of those it used as
    interleaved; the median |offset| (with the lowest and highest of the
    rounds' medians) and delay of the samples used, and of the
    interleaved ones alone; the offsets C{chronyd -Q} printed; and what
    the background load got answered.
    """
    rows = []
    for row in results["rows"]:
        if row["load"] == "loaded":
            load = (
                f"{number(row.get('load_rps'))}/s, "
                f"{number(_percent(row.get('load_loss')), '{:.1f}')} % lost"
            )
        else:
            load = "-"
        used = f"{row['accepted']} of {row['samples']}"
        if row["mode"] == "xleave":
            used += f", {row['interleaved']} interleaved"
        interleaved = "-"
        if row["interleaved"]:
            interleaved = (
                f"{micro(row['interleaved_median_abs_offset_us'])} / "
                f"{micro(row['interleaved_median_delay_us'])}"
            )
        offset = micro(row["median_abs_offset_us"])
        rounds = row["round_medians_abs_offset_us"]
        if len(rounds) > 1:
            offset += f" ({micro(min(rounds))} to {micro(max(rounds))})"
        rows.append(
            (
                row["label"],
                row["mode"],
                row["load"],
                used,
                offset,
                micro(row["median_delay_us"]),
                interleaved,
                _range(row["reported_offset_us"]),
                load,
            )
        )
    header = (
        "server",
        "client mode",
        "load",
        "samples used",
        "median |offset| µs (rounds)",
        "median delay µs",
        "interleaved only: |offset| / delay µs",
        "chronyd -Q printed µs",
        "background load answered",
    )
    return Table(header, tuple(rows))


def _percent(value: float | None) -> float | None:
    return None if value is None else value * 100


def _range(values: Sequence[float]) -> str:
    if not values:
        return "-"
    low, high = round(min(values)), round(max(values))
    return f"{low}" if low == high else f"{low} to {high}"


def serversTable(results: dict[str, Any]) -> Table:
    """
    How each server was run, with C{PORT} for its port and C{DIR} for its
    directory.
    """
    servers = results["settings"]["servers"]
    configured = any("configuration" in s for s in servers)
    rows = []
    for server in servers:
        cells = [server["key"], server["command"]]
        if configured:
            cells.append(server.get("configuration", "-"))
        rows.append(tuple(cells))
    header = ("server", "command", "configuration")
    return Table(header[: 3 if configured else 2], tuple(rows), frozenset({1, 2}))


# --- conditions ------------------------------------------------------------------


def conditions(results: dict[str, Any]) -> list[tuple[str, str]]:
    """
    What a results file says about its run: when, from which commit, on
    what machine and software, with which command and settings, and how
    busy the machine was.
    """
    machine = results["machine"]
    fields = [("Date", results["date"].replace("T", " ").replace("Z", " UTC"))]
    git = results.get("git")
    if git:
        changed = ", with local changes" if git["changed"] else ""
        fields.append(("Commit", f"{git['commit'][:12]}{changed}"))
    where = [f"{machine['cpus']} CPUs"]
    if machine.get("virtual_machine") not in (None, "none"):
        where.append(f"virtual machine ({machine['virtual_machine']})")
    if machine.get("container") not in (None, "none"):
        where.append(f"container ({machine['container']})")
    if machine.get("memory_gib"):
        where.append(f"{machine['memory_gib']} GiB")
    fields.append(("Machine", f"{machine['cpu']}; {', '.join(where)}"))
    software = [f"Linux {machine['kernel']}", f"Python {machine['python']}"]
    for name, label in (
        ("udptime", "udptime"),
        ("twisted", "Twisted"),
        ("uvloop", "uvloop"),
        ("chronyd", "chronyd"),
    ):
        if machine.get(name):
            software.append(f"{label} {machine[name]}")
    if machine.get("cc"):
        software.append(machine["cc"])
    fields.append(("Software", ", ".join(software)))
    fields.append(("Command", results["command"]))
    fields += SETTINGS[results["kind"]](results["settings"])
    state = results.get("conditions")
    if state:
        fields.append(
            (
                "Machine load",
                "load average "
                + " / ".join(f"{v:.2f}" for v in state["load_average_before"])
                + " (1 / 5 / 15 minutes) at the start, "
                + " / ".join(f"{v:.2f}" for v in state["load_average_after"])
                + f" at the end; CPU time stolen by the hypervisor "
                f"{state['steal'] * 100:.1f} %",
            )
        )
    if results.get("note"):
        fields.append(("Note", results["note"]))
    return fields


def throughputSettings(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """
    A throughput run's settings, in words.
    """
    rates = ", ".join(f"{r:,}" for r in settings["rates"])
    spin = "polling for replies" if settings["spin"] else "sleeping between replies"
    return [
        (
            "Settings",
            f"{settings['runs']} round(s) over every server; closed loop of "
            f"{settings['inflight']} requests in flight for {settings['duration']:g} s "
            f"after {settings['warmup']:g} s of warm-up; open loops at {rates} "
            f"requests/s for {settings['duration']:g} s each; server pinned to CPU "
            f"{_cpus(settings['server_cpus'])}, load generator to CPU "
            f"{_cpus(settings['load_cpus'])} ({spin}), except for the runs with "
            "workers",
        )
    ]


def accuracySettings(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """
    An accuracy run's settings, in words, and its client.
    """
    measured = settings.get("capacity_rps")
    if settings.get("load_rate_given"):
        load = f"{settings['load_rps']:,.0f} requests/s, as asked"
    else:
        load = (
            f"{settings['load_rps']:,.0f} requests/s "
            f"({settings['load_fraction']:.0%} of the {measured:,.0f} requests/s "
            f"udptime answered in a closed loop, {settings['capacity_source']})"
        )
    return [
        (
            "Settings",
            f"{settings['runs']} round(s), in each every server idle and loaded, "
            f"each time at least {settings['samples']} accepted samples per client "
            f"mode; chronyd -Q polling every 2^{settings['minpoll']} s; background "
            f"load {load}; servers pinned to CPU {_cpus(settings['server_cpus'])}, "
            f"clients and load generator to CPU {_cpus(settings['load_cpus'])}",
        ),
        ("Client command", settings["client_command"]),
        ("Client configuration", settings["client_configuration"]),
    ]


def _cpus(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


# The fields of L{conditions} whose values are code.
CODE_FIELDS = frozenset({"Command", "Client command", "Client configuration"})


def soakSettings(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """
    A soak run's settings, in words.
    """
    return [
        (
            "Settings",
            f"{settings['duration_s'] / 60:g} minutes, sampled every "
            f"{settings['sample_s']:g} s; a worker killed every "
            f"{settings['kill_every_s']:g} s; {settings['polite_clients']} polite "
            f"clients, a flood burst of {settings['flood_burst']} per second, "
            f"{settings['spread_per_s']} new addresses, "
            f"{settings['garbage_per_s']} malformed and {settings['forged_per_s']} "
            f"forged datagrams per second; at nice {settings['niceness']}",
        )
    ]


SETTINGS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str]]]] = {
    "throughput": throughputSettings,
    "accuracy": accuracySettings,
    "soak": soakSettings,
}

# Each table: the kind of results it reads, and how it is made.
TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], Table]]] = {
    "throughput": ("throughput", throughputTable),
    "latency": ("throughput", latencyTable),
    "workers": ("throughput", workersTable),
    "roughtime": ("throughput", roughtimeTable),
    "nts": ("throughput", ntsTable),
    "accuracy": ("accuracy", accuracyTable),
    "throughput-servers": ("throughput", serversTable),
    "accuracy-servers": ("accuracy", serversTable),
}


def textReport(results: dict[str, Any]) -> str:
    """
    A results file for the terminal: its conditions, then its tables.
    """
    out = [f"{name}: {value}" for name, value in conditions(results)]
    for name, (kind, make) in TABLES.items():
        if kind != results["kind"]:
            continue
        table = make(results)
        if table.rows:
            out += ["", f"{name}:", table.text()]
    return "\n".join(out)


# --- goals -----------------------------------------------------------------------


def goals(
    throughput: dict[str, Any] | None, accuracy: dict[str, Any] | None
) -> list[str]:
    """
    The goals udptime is measured against, each with the measured figure
    and whether it is met.
    """
    found: list[str] = []

    def check(name: str, value: float | None, goal: float, atLeast: bool) -> None:
        if value is None:
            return
        met = value >= goal if atLeast else value <= goal
        sign = ">=" if atLeast else "<="
        found.append(
            f"  {name}: {value:.2f} ({sign} {goal:g}) {'met' if met else 'MISSED'}"
        )

    if throughput:
        byKey = {row["key"]: row for row in throughput["rows"]}
        for protocol in ("text", "ntp"):
            me = byKey.get(f"{protocol}: udptime {protocol}")
            if me is None:
                continue
            for other, goal in (
                ("Twisted DatagramProtocol", 1.3),
                ("asyncio", 3.0),
                ("blocking recvfrom loop", 1.0),
            ):
                row = byKey.get(f"{protocol}: {other}")
                if row:
                    check(f"{me['key']} ÷ {other}", row["ratio"]["median"], goal, True)
            check(f"{me['key']} CPU µs/request", me["cpu_us"], 6.0, False)
            for entry in me["latency"]:
                if entry["rate"] == 10000:
                    check(
                        f"{me['key']} p99 µs at 10,000/s", entry["p99_us"], 100.0, False
                    )
        rough = byKey.get("roughtime: udptime roughtime")
        if rough is not None:
            roughly = byKey.get("roughtime: roughly server run")
            if roughly:
                check("roughtime ÷ roughly", roughly["ratio"]["median"], 5.0, True)
            check("roughtime CPU µs/request", rough["cpu_us"], 15.0, False)
            check(
                "roughtime responses per signature", rough.get("mean_batch"), 16, True
            )
        if byKey.get("nts: udptime nts") is not None:
            chronyd = byKey.get("nts: chronyd")
            if chronyd:
                check("nts ÷ chronyd's NTS", chronyd["ratio"]["median"], 0.5, True)
        one = byKey.get("text: udptime text, 1 workers")
        two = byKey.get("text: udptime text, 2 workers")
        if one and two and one["rps"]:
            check("2 workers ÷ 1 worker", two["rps"] / one["rps"], 1.0, True)
            check("2 workers' imbalance", two.get("worker_imbalance"), 0.2, False)
    if accuracy:
        loaded = {
            row["server"]: row
            for row in accuracy["rows"]
            if row["mode"] == "basic" and row["load"] == "loaded"
        }
        chrony = loaded.get("ntp: chronyd")
        for key, row in loaded.items():
            if not key.startswith("ntp: udptime") or chrony is None:
                continue
            mine, theirs = row["median_abs_offset_us"], chrony["median_abs_offset_us"]
            if mine is not None and theirs is not None:
                check(
                    f"{row['label']}: loaded |offset| ÷ chronyd's, basic mode "
                    f"({mine:.1f} against {theirs:.1f} µs)",
                    mine / max(theirs, 1.0),
                    2.0,
                    False,
                )
    return found
