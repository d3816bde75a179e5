"""
The throughput benchmark: each server in turn, on a free loopback port
pinned to one CPU, with the load generator pinned to another, gets

  - a closed loop of C{inflight} requests outstanding for C{duration}
    seconds: requests per second, and the server's CPU time per request
    (the scheduler's count, split between user space and the kernel);
  - an open loop at each of C{rates} requests per second: latency
    percentiles from the send to the kernel's receive timestamp of the
    reply, and loss.

Rounds are interleaved (every server once, then again) and the rows give
medians over the rounds; each server's throughput is also compared with
udptime's, within each round.

The NTS servers (udptime's NTP service with its NTS-KE service on, and
chronyd as an NTS server) get closed loops only, of one authenticated
request made for each server as it starts (C{bench/ntsrequest.py}: a key
exchange and udptime's client) and replayed as it is from every source
address: a server that keeps no state per client answers each copy.  The
replies' lengths (all of them those of an authenticated reply, none a
NAK's) and, for udptime, its NTS counters as it stops say that they were
answered as authenticated requests.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from load import closedLoop, log, openLoop
from processes import CPUTimes, cpus
from results import median
from servers import Running, Server


@dataclass(frozen=True)
class ThroughputSettings:
    """
    How long and how hard each server is driven.

    @ivar runs: rounds over every server.
    @ivar duration: seconds of each measured loop.
    @ivar warmup: seconds of closed loop before the measured one.
    @ivar inflight: requests outstanding in the closed loop.
    @ivar rates: requests per second of each open loop.
    @ivar spin: whether the pinned load generator polls for replies instead
        of sleeping.
    """

    runs: int
    duration: float
    warmup: float
    inflight: int
    rates: tuple[int, ...]
    spin: bool


def measure(
    server: Server,
    settings: ThroughputSettings,
    serverCPUs: set[int],
    loadCPUs: set[int],
) -> dict[str, Any]:
    """
    One round of one server: its throughput, CPU and latency figures.
    """
    pinServer = serverCPUs if server.pinned else set(cpus())
    pinLoad = loadCPUs if server.pinned else None
    # A load generator on a core of its own polls for replies instead of
    # sleeping (see bench/loadgen.c); one sharing cores with workers sleeps.
    spin = server.pinned and settings.spin
    result: dict[str, Any] = {
        "key": server.key,
        "label": server.label,
        "protocol": server.protocol,
    }
    with Running(server, pinServer) as running:
        payload = running.payload
        # warm up (caches, the interpreter's specialisation, the CPU clock)
        closedLoop(
            running.port,
            server.protocol,
            pinLoad,
            settings.inflight,
            settings.warmup,
            payload=payload,
        )
        before = CPUTimes.of(running.pid)
        closed = closedLoop(
            running.port,
            server.protocol,
            pinLoad,
            settings.inflight,
            settings.duration,
            spin,
            payload,
        )
        used = CPUTimes.of(running.pid) - before
        answered = max(closed["received"], 1)
        result["closed"] = closed
        result["rps"] = closed["rps"]
        result["cpu_us"] = used.total * 1e6 / answered
        result["user_us"] = used.user * 1e6 / answered
        result["kernel_us"] = used.kernel * 1e6 / answered
        result["server_cpu"] = used.total / closed["seconds"]
        result["loadgen_busy"] = closed["busy"]
        # Roughtime's rows are closed loops only, so that the responses per
        # signature read as the server stops (meanBatch) are theirs; NTS's
        # too, so that its counters are the closed loops'.
        closedOnly = server.protocol in ("roughtime", "nts")
        result["open"] = [
            {
                "rate": rate,
                **openLoop(
                    running.port, server.protocol, pinLoad, rate, settings.duration
                ),
            }
            for rate in ([] if closedOnly else settings.rates)
        ]
        if server.workers:
            result["worker_answers"] = workerAnswers(running)
        elif server.protocol == "roughtime" and server.kind == "udptime":
            result["mean_batch"] = meanBatch(running)
        if server.protocol == "nts":
            result["reply_bytes"] = [closed.get("reply_min"), closed.get("reply_max")]
            result["nts_request"] = running.ntsRequest
            if server.kind == "udptime":
                result["nts_counters"] = ntsCounters(running)
    return result


def stoppedLog(running: Running) -> str:
    """
    Stop the server (C{SIGTERM}, and wait for it) and return its whole log,
    where udptime writes its summaries as it stops.
    """
    process = running.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    process.wait(15)
    return running.log()


def ntsCounters(running: Running) -> dict[str, int]:
    """
    Stop udptime's server and return its NTS counters over the whole run
    (the request's checks, the warm-up and the measured loop), from the
    summary it logs as it stops: C{authenticated}, C{naks},
    C{badAuthenticators}, C{malformed} and the rest, those not logged
    (zero) left out.
    """
    found: dict[str, int] = {}
    for line in stoppedLog(running).splitlines():
        totals = re.search(r"udptime nts: .*; totals ([^;]*)", line)
        if totals:
            found = {
                name: int(value)
                for name, value in re.findall(r"(\w+)=(\d+)", totals.group(1))
            }
    return found


def meanBatch(running: Running) -> float | None:
    """
    Stop udptime's Roughtime service and return the mean number of
    responses per signature over its closed loops (the warm-up and the
    measured one), from the line it logs as it stops.
    """
    found = re.search(
        r"roughtime: (\d+) responses signed in (\d+) batches", stoppedLog(running)
    )
    if found is None or not int(found.group(2)):
        return None
    return int(found.group(1)) / int(found.group(2))


def workerAnswers(running: Running) -> list[int]:
    """
    Stop the server and return the requests each worker answered in the
    whole run, from the counter summaries that workers log as they stop.
    """
    answered: dict[str, int] = {}
    for line in stoppedLog(running).splitlines():
        found = re.search(r"worker (\d+).*totals received=\d+ answered=(\d+)", line)
        if found:
            answered[found.group(1)] = int(found.group(2))
    return [answered[k] for k in sorted(answered)]


def runRounds(
    servers: Sequence[Server],
    settings: ThroughputSettings,
    serverCPUs: set[int],
    loadCPUs: set[int],
) -> list[list[dict[str, Any]]]:
    """
    C{settings.runs} rounds over every server: one list of results per
    round.
    """
    rounds: list[list[dict[str, Any]]] = []
    for number in range(settings.runs):
        results = []
        for server in servers:
            log(f"throughput round {number + 1}/{settings.runs}: {server.key}")
            result = measure(server, settings, serverCPUs, loadCPUs)
            log(
                f"  {result['rps']:,.0f} req/s, {result['cpu_us']:.2f} µs CPU/req, "
                f"server CPU {result['server_cpu']:.0%}, "
                f"load generator busy {result['loadgen_busy']:.0%}"
            )
            if result["loadgen_busy"] > 0.9:
                log("  warning: the load generator was near 100% busy: the limit?")
            results.append(result)
        rounds.append(results)
    return rounds


def imbalance(answers: Sequence[int]) -> float:
    """
    How far the busiest or idlest worker is from an even share, as a
    fraction of that share (0: perfectly even).
    """
    even = sum(answers) / len(answers)
    return max(abs(a - even) for a in answers) / even if even else 0.0


def ratios(
    rounds: Sequence[Sequence[dict[str, Any]]], baselines: dict[str, str]
) -> dict[str, list[float]]:
    """
    For each server, in each round where both ran: its protocol's baseline
    throughput divided by its own (above 1: udptime answered more).

    @param baselines: the key of each protocol's baseline server.
    """
    found: dict[str, list[float]] = {}
    for results in rounds:
        rps = {r["key"]: r["rps"] for r in results}
        for result in results:
            base = rps.get(baselines.get(result["protocol"], ""))
            if base and result["rps"]:
                found.setdefault(result["key"], []).append(base / result["rps"])
    return found


def ntsSummary(mine: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """
    What an NTS server's rounds say of its replies: the request's length,
    the lengths of the replies the client checked and of every reply the
    load generator received (the shortest and the longest), and udptime's
    NTS counters added up over the rounds.
    """
    requests = [r["nts_request"] for r in mine if r.get("nts_request")]
    lengths = [n for r in mine for n in r.get("reply_bytes", []) if n and n > 0]
    counters: dict[str, int] = {}
    for each in (r["nts_counters"] for r in mine if "nts_counters" in r):
        for name, value in each.items():
            counters[name] = counters.get(name, 0) + value
    found: dict[str, Any] = {
        "request_bytes": requests[0]["request_bytes"] if requests else None,
        "checked_reply_bytes": sorted({n for q in requests for n in q["reply_bytes"]}),
        "checked_replies": sum(q["checked"] for q in requests),
        "reply_bytes": [min(lengths), max(lengths)] if lengths else None,
    }
    if any("nts_counters" in r for r in mine):
        found["nts_counters"] = counters
    return found


def summarise(
    rounds: Sequence[Sequence[dict[str, Any]]],
    servers: Sequence[Server],
    rates: Sequence[int],
) -> list[dict[str, Any]]:
    """
    One row per server, in the order of C{servers}: medians over the
    rounds, and the ratios of udptime's throughput to each server's.
    """
    byKey: dict[str, list[dict[str, Any]]] = {}
    for results in rounds:
        for result in results:
            byKey.setdefault(result["key"], []).append(result)
    baselines = {s.protocol: s.key for s in servers if s.baseline}
    ratioRounds = ratios(rounds, baselines)
    rows = []
    for server in servers:
        mine = byKey.get(server.key)
        if not mine:
            continue
        found = ratioRounds.get(server.key, [])
        row: dict[str, Any] = {
            "key": server.key,
            "label": server.label,
            "protocol": server.protocol,
            "kind": server.kind,
            "baseline": server.baseline,
            "workers": server.workers,
            "rounds": len(mine),
            "rps": median([r["rps"] for r in mine]),
            "rps_rounds": [round(r["rps"]) for r in mine],
            "ratio": {
                "median": median(found),
                "low": min(found, default=None),
                "high": max(found, default=None),
            },
            "cpu_us": median([r["cpu_us"] for r in mine]),
            "user_us": median([r["user_us"] for r in mine]),
            "kernel_us": median([r["kernel_us"] for r in mine]),
            "server_cpu": median([r["server_cpu"] for r in mine]),
            "loadgen_busy": median([r["loadgen_busy"] for r in mine]),
            "latency": [],
        }
        for rate in rates:
            runs = [o for r in mine for o in r["open"] if o["rate"] == rate]
            if not runs:
                continue
            row["latency"].append(
                {
                    "rate": rate,
                    "p50_us": median([o["p50_us"] for o in runs]),
                    "p99_us": median([o["p99_us"] for o in runs]),
                    "p999_us": median([o["p999_us"] for o in runs]),
                    "loss": median([o["lost"] / max(o["sent"], 1) for o in runs]),
                }
            )
        batches = [r["mean_batch"] for r in mine if r.get("mean_batch")]
        if batches:
            row["mean_batch"] = median(batches)
        if server.protocol == "nts":
            row.update(ntsSummary(mine))
        answers = [r["worker_answers"] for r in mine if r.get("worker_answers")]
        if answers:
            row["worker_answers"] = answers
            row["worker_imbalance"] = median([imbalance(a) for a in answers])
        rows.append(row)
    return rows
