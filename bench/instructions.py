"""
The user-space instructions one request costs each server path, counted by
valgrind's callgrind: unlike times, the counts repeat to within about 1 %
from run to run whatever else the machine is doing, so they show what a change to the
hot path did even on a shared, noisy machine.  They leave out the kernel
(the system calls' own work, about half of a request's time) and say
nothing of caches or wake-ups: a complement to bench/hotpath.py and
bench/run.py, not a replacement.

    python bench/instructions.py [--requests 1000] [--passes 5] [--only WORD...]
                                 [--repeat N] [--source DIR...]

Each path (the same as bench/hotpath.py's: udptime's port, batched, the
blocking loop and the bare Twisted server, for text and NTP) answers
C{requests} queued requests once and then C{passes} more times, each run
under callgrind; the difference between the two runs' totals, divided by
the requests of the extra passes, is what one request costs, start-up and
set-up cancelled out.  The client side of the exchange (sending the
requests and reading the replies, in the same process) is counted too,
alike for every path; the C{floor} rows, which answer with a constant reply
and no policy, show how much of a count that and the plumbing are.  The
Roughtime rows queue their requests a batch at a time (1, 16 or 64), as a
Roughtime server signs once per read: what a request costs at that batch
size, the signature's share included.

Every count runs with C{PYTHONHASHSEED=0}: with random string hashes, the
dictionaries and sets the interpreter builds as it starts differ from run
to run, and so do the instructions the once-and-more difference leaves.

C{--repeat N} counts each path N times and prints the median with the
lowest and highest; C{--source DIR} (more than one allowed) counts the
C{udptime} package of another checkout of the project (a C{git worktree}
of an older commit, say) with this benchmark's code, the checkouts taking
turns within each repetition, so that two versions of the hot path are
compared by the same measurement.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path as FilePath

HERE = FilePath(__file__).resolve().parent

PATHS = {
    "text: udptime, ServerPort, batched": ("udptime", "text", 0),
    "text: blocking loop": ("blocking", "text", 0),
    "text: bare Twisted": ("twisted", "text", 0),
    "NTP: udptime, ServerPort, batched, kernel ts": ("udptime", "ntp", 0),
    "NTP: blocking loop": ("blocking", "ntp", 0),
    "NTP: bare Twisted": ("twisted", "ntp", 0),
    "floor: blocking loop, constant reply": ("floor", "ntp", 0),
    "Roughtime: udptime, batches of 1": ("udptime", "roughtime", 1),
    "Roughtime: udptime, batches of 16": ("udptime", "roughtime", 16),
    "Roughtime: udptime, batches of 64": ("udptime", "roughtime", 64),
}
"""Each path: how it is served, its protocol, and the requests queued for
each read (0: all of them at once; Roughtime signs once per read)."""


def child(kind: str, protocol: str, requests: int, passes: int, batch: int) -> None:
    """
    Answer C{requests} queued requests C{passes} times on one path (run
    under callgrind by L{count}), C{batch} at a time (0: all at once).
    """
    sys.path.insert(0, str(HERE))
    import hotpath  # here: the parent process needs no Twisted

    if kind == "udptime":
        path = hotpath.udptime(protocol, True, protocol == "ntp", requests, True)
    elif kind == "twisted":
        path = hotpath.bareTwisted(protocol)
    elif kind == "floor":
        constant = bytes(48)
        path = hotpath.blocking(protocol, lambda data: constant)
    else:
        path = hotpath.blocking(protocol)
    socks = hotpath.clients(64)
    batch = batch or requests
    for _ in range(passes):
        answered = 0
        for _ in range(requests // batch):
            hotpath.fill(path.serverSock, socks, path.payload, batch)
            path.onePass()
            answered += hotpath.drain(socks)
        if answered != requests // batch * batch:
            raise SystemExit(f"{answered} replies to {requests} requests")


def childEnvironment(
    source: str | None, environment: Mapping[str, str] | None = None
) -> dict[str, str]:
    """
    The environment of a counted child: C{environment} (by default this
    process's) with string hashing fixed, and with the C{udptime} package
    of the checkout C{source} first on the path when one is given.
    """
    found = dict(os.environ if environment is None else environment)
    found["PYTHONHASHSEED"] = "0"
    if source is not None:
        paths = [str(FilePath(source).resolve()), found.get("PYTHONPATH", "")]
        found["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return found


def spread(values: Sequence[float]) -> str:
    """
    The median of C{values}, with their lowest and highest and the range
    as a share of the median, when there are several.
    """
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:8.0f}"
    low, high = min(values), max(values)
    share = (high - low) / middle * 100 if middle else 0.0
    return f"{middle:8.0f} ({low:.0f} to {high:.0f}, range {share:.2f} %)"


def count(
    kind: str,
    protocol: str,
    requests: int,
    passes: int,
    batch: int,
    source: str | None = None,
) -> int:
    """
    The instructions callgrind counts for L{child}, with the C{udptime}
    package of the checkout C{source} when one is given.
    """
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            kind,
            protocol,
            str(requests),
            str(passes),
            str(batch),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
        env=childEnvironment(source),
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"no count from callgrind: {result.stderr[-500:]}")
    return int(found.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        path, protocolName, requests, passes, batch = sys.argv[2:7]
        child(path, protocolName, int(requests), int(passes), int(batch))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument(
        "--only", nargs="*", help="paths whose name contains one of these"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="counts of each path (default 1)"
    )
    parser.add_argument(
        "--source",
        nargs="*",
        metavar="DIR",
        help="count the udptime package of these checkouts instead of this one's",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions.py: valgrind is not installed")
    if args.repeat < 1 or args.requests < 1 or args.passes < 1:
        raise SystemExit("instructions.py: --repeat, --requests, --passes: 1 or more")
    sources: list[str | None] = list(args.source or [None])
    for label, (kind, protocol, perRead) in PATHS.items():
        if args.only and not any(word in label for word in args.only):
            continue
        each = perRead or args.requests
        answered = args.requests // each * each
        counted: dict[str | None, list[float]] = {s: [] for s in sources}
        for _ in range(args.repeat):
            for source in sources:
                once = count(kind, protocol, args.requests, 1, perRead, source)
                more = count(
                    kind, protocol, args.requests, 1 + args.passes, perRead, source
                )
                counted[source].append((more - once) / (args.passes * answered))
        for source, values in counted.items():
            name = label if source is None else f"{label} [{source}]"
            print(f"{name:<46} {spread(values)} instructions/request", flush=True)


if __name__ == "__main__":
    main()
