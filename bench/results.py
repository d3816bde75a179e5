"""
The benchmark's results as data: one JSON file per run and kind
(C{throughput}, C{accuracy}), with what was measured, on what machine,
when, from which commit, with which command, and under which conditions.

Every run writes its file into C{bench/results/} (scratch, not kept in
git).  Published results, the ones the documentation shows, are the same
files copied to C{docs/data/KIND.json} (C{bench/run.py ... --publish}, or
C{bench/run.py publish FILE}).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PUBLISHED = ROOT / "docs" / "data"

SCHEMA = "udptime-bench/1"
KINDS = ("throughput", "accuracy", "soak", "clientaccuracy", "suite")


def median(values: Sequence[float | None]) -> float | None:
    """
    The median of the values present; L{None} when there is none.
    """
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def commandOutput(command: Sequence[str]) -> str | None:
    """
    The first line C{command} prints, or L{None} when it cannot run or
    fails.
    """
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=10, cwd=ROOT
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def packageVersion(name: str) -> str | None:
    """
    The installed version of the Python distribution C{name}, or L{None}.
    """
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpuModel() -> str:
    """
    The CPU's model name, as the kernel reports it.
    """
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    """
    The machine and software the benchmark runs on.
    """
    chronyd = shutil.which("chronyd") or shutil.which("/usr/sbin/chronyd")
    chronydVersion = commandOutput([chronyd, "--version"]) if chronyd else None
    if chronydVersion:
        chronydVersion = chronydVersion.split("(")[0].replace("chronyd", "").strip()
        chronydVersion = chronydVersion.replace("version", "").strip()
    detect = shutil.which("systemd-detect-virt")
    memory = None
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/meminfo") as f,
    ):
        memory = round(int(f.readline().split()[1]) / 1024**2, 1)
    return {
        "cpu": cpuModel(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": memory,
        "virtual_machine": commandOutput([detect, "--vm"]) if detect else None,
        "container": commandOutput([detect, "--container"]) if detect else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "udptime": packageVersion("udptime"),
        "twisted": packageVersion("Twisted"),
        "uvloop": packageVersion("uvloop"),
        "chronyd": chronydVersion,
        "cc": commandOutput(["cc", "--version"]),
    }


def gitCommit() -> dict[str, Any] | None:
    """
    The commit of the working tree the benchmark runs from, and whether
    tracked files were changed; L{None} outside a git checkout.
    """
    commit = commandOutput(["git", "rev-parse", "HEAD"])
    if commit is None:
        return None
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=ROOT,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        status = ""
    return {"commit": commit, "changed": bool(status.strip())}


def cpuStatistics() -> list[int]:
    """
    The machine's CPU time counters (the C{cpu} line of C{/proc/stat}).
    """
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


def loadAverage() -> list[float]:
    """
    The load averages over 1, 5 and 15 minutes.
    """
    return [round(v, 2) for v in os.getloadavg()]


class Conditions:
    """
    The machine's state over a run: its load average at the start and at
    the end, and the share of CPU time the hypervisor took (steal).
    """

    def __init__(self) -> None:
        self.loadBefore = loadAverage()
        self.counters = cpuStatistics()

    def finish(self) -> dict[str, Any]:
        """
        The conditions from the start until now.
        """
        after = cpuStatistics()
        spent = [b - a for a, b in zip(self.counters, after, strict=False)]
        total = sum(spent[:8]) or 1
        steal = spent[7] if len(spent) > 7 else 0
        return {
            "load_average_before": self.loadBefore,
            "load_average_after": loadAverage(),
            "steal": round(steal / total, 4),
        }


def newResults(
    kind: str,
    command: str,
    settings: dict[str, Any],
    note: str | None,
) -> dict[str, Any]:
    """
    The start of a results file of C{kind}: everything but what is
    measured.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind of results {kind!r}")
    return {
        "schema": SCHEMA,
        "kind": kind,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": gitCommit(),
        "command": command,
        "machine": machine(),
        "settings": settings,
        "note": note,
    }


def write(results: dict[str, Any], directory: Path = RESULTS) -> Path:
    """
    Write C{results} into C{directory}, named after their kind and date.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stamp = results["date"].replace("-", "").replace(":", "").rstrip("Z")
    return dump(results, directory / f"{results['kind']}-{stamp}.json")


def dump(results: dict[str, Any], path: Path) -> Path:
    """
    Write C{results} to C{path}, as indented JSON: C{path}.
    """
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return path


def read(path: Path) -> dict[str, Any]:
    """
    A results file.

    @raise ValueError: when it is not one of this schema.
    """
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a results file of schema {SCHEMA}")
    if data.get("kind") not in KINDS:
        raise ValueError(f"{path}: unknown kind {data.get('kind')!r}")
    return data


def publishedPath(kind: str, directory: Path = PUBLISHED) -> Path:
    """
    Where the published results of C{kind} are.
    """
    return directory / f"{kind}.json"


def publish(
    results: dict[str, Any], directory: Path = PUBLISHED, name: str | None = None
) -> Path:
    """
    Write C{results} where the documentation reads them: as the published
    results of their kind, or under C{name} (the results of a run of some
    of the servers, such as C{--only roughtime}, beside the full run's).

    @raise ValueError: C{name} is not a plain file name.
    """
    if name is not None and not name.replace("-", "").isalnum():
        raise ValueError(f"a published name is letters, digits and '-', not {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    return dump(results, publishedPath(name or results["kind"], directory))
