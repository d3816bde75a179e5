"""
The whole test suite, again and again, on a busy machine: pytest and trial
side by side (each of them a CPU-heavy process beside the other), with
C{--hogs} more processes spinning on the CPU, for C{--runs} rounds.  A
suite whose tests wait for what the server decided, not for exact timing
or delivery, passes every round; one that does not shows it here.  From
the project's top directory, in the virtualenv where udptime and its test
extras are installed::

    python bench/suiteunderload.py               # 5 rounds, one hog
    python bench/suiteunderload.py --runs 1      # one round

Each round records, for each runner, its exit status, its last summary
line, its wall time and the load average; the logs of a round that fails
are kept in the results directory.  It stops at the first failure unless
C{--keep-going}.  Results: C{bench/results/suite-DATE.json}.  Every
process it starts (the runners, the hogs) it stops by its PID.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import processes
import results

RUNNERS: dict[str, list[str]] = {
    "pytest": [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
    "trial": [sys.executable, "-m", "twisted.trial", "tests"],
}
"""
The two ways the suite runs, as the project documents them.
"""

HOG = (
    "import time\n"
    "end = time.monotonic() + {limit}\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)
"""
A process that keeps one CPU busy until C{limit} seconds have passed (so
that even a hog this script failed to stop ends on its own).
"""


def summaryLine(output: str) -> str:
    """
    The last non-empty line of a runner's output: pytest's and trial's
    verdict.
    """
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def runRound(number: int, logs: Path, timeout: float) -> list[dict[str, Any]]:
    """
    Both runners at the same time; what each ended with.
    """
    started: dict[str, tuple[subprocess.Popen[bytes], Path, float]] = {}
    for name, command in RUNNERS.items():
        log = logs / f"round{number}-{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "UDPTIME_REQUIRE_PEERS": "1"},
            )
        started[name] = (process, log, time.monotonic())
    ended: dict[str, dict[str, Any]] = {}
    while len(ended) < len(started):
        for name, (process, log, start) in started.items():
            if name in ended:
                continue
            returncode = process.poll()
            overdue = time.monotonic() - start > timeout
            if returncode is None and not overdue:
                continue
            if returncode is None:
                processes.stop(process)
            output = log.read_text(errors="replace")
            ended[name] = {
                "runner": name,
                "returncode": returncode,
                "summary": summaryLine(output),
                "seconds": round(time.monotonic() - start, 1),
                "load_average": results.loadAverage(),
            }
            if returncode == 0:
                log.unlink()
        time.sleep(1)  # polling two long runs, bounded by the timeout
    return list(ended.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--runs", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--hogs", type=int, default=1, help="processes spinning beside (default 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds a runner may take before it counts as failed (default 3600)",
    )
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument("--note", default=None)
    options = parser.parse_args(argv)
    if options.runs < 1 or options.hogs < 0:
        parser.error("--runs must be at least 1 and --hogs at least 0")
    command = "bench/suiteunderload.py " + shlex.join(argv or sys.argv[1:])
    record = results.newResults(
        "suite",
        command,
        {"runs": options.runs, "hogs": options.hogs, "runners": list(RUNNERS)},
        options.note,
    )
    logs = results.RESULTS / f"suite-logs-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    limit = options.runs * options.timeout
    hogs = [
        subprocess.Popen([sys.executable, "-c", HOG.format(limit=limit)])
        for _ in range(options.hogs)
    ]
    rounds: list[list[dict[str, Any]]] = []
    try:
        for number in range(1, options.runs + 1):
            ended = runRound(number, logs, options.timeout)
            rounds.append(ended)
            for runner in ended:
                print(
                    f"round {number} {runner['runner']}: rc={runner['returncode']}"
                    f" {runner['seconds']} s load {runner['load_average']}:"
                    f" {runner['summary']}",
                    flush=True,
                )
            if not options.keep_going and any(r["returncode"] != 0 for r in ended):
                break
    finally:
        for hog in hogs:
            processes.stop(hog)
    record["rounds"] = rounds
    record["passed_in_a_row"] = 0
    for ended in rounds:
        if any(r["returncode"] != 0 for r in ended):
            break
        record["passed_in_a_row"] += 1
    if not any(logs.iterdir()):
        logs.rmdir()
    path = results.write(record)
    print(
        f"{record['passed_in_a_row']} of {options.runs} rounds passed in a row: {path}"
    )
    return 0 if record["passed_in_a_row"] == options.runs else 1


if __name__ == "__main__":
    sys.exit(main())
