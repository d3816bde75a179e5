"""
The processes of udptime's benchmark: a process and its descendants, the
CPU time they used, from C{/proc}, split between user space and the
kernel, and stopping a process the benchmark started, by its PID.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def cpus() -> list[int]:
    """
    The CPUs this process may run on, in order.
    """
    return sorted(os.sched_getaffinity(0))


def statFields(path: str) -> list[str] | None:
    """
    The fields of the C{/proc/PID/stat} file at C{path} from the third
    (the state) on, or L{None} when the process is gone.
    """
    try:
        with open(path) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def processTree(pid: int) -> list[int]:
    """
    C{pid} and its descendants, parents before their children.
    """
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        fields = statFields(stat)
        if fields is None:
            continue
        child = int(stat.split("/")[2])
        children.setdefault(int(fields[1]), []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpuNanoseconds(pid: int) -> int:
    """
    CPU time used so far by the threads of C{pid}, in nanoseconds, from the
    scheduler's accounting (C{/proc/PID/task/*/schedstat}).
    """
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


@dataclass(frozen=True)
class CPUTimes:
    """
    CPU time used by a process tree, in seconds.

    @ivar total: the scheduler's count (C{schedstat}, nanosecond
        resolution).
    @ivar user: time in user space (C{utime} of C{/proc/PID/stat}, in clock
        ticks, so coarser than C{total}).
    @ivar kernel: time in the kernel (C{stime}, in clock ticks).
    """

    total: float
    user: float
    kernel: float

    @classmethod
    def of(cls, pid: int) -> CPUTimes:
        """
        The CPU time used so far by C{pid} and its descendants.
        """
        tick = os.sysconf("SC_CLK_TCK")
        nanoseconds = user = kernel = 0
        for each in processTree(pid):
            nanoseconds += cpuNanoseconds(each)
            fields = statFields(f"/proc/{each}/stat")
            if fields is None:
                continue
            user += int(fields[11])
            kernel += int(fields[12])
        return cls(nanoseconds / 1e9, user / tick, kernel / tick)

    def __sub__(self, other: CPUTimes) -> CPUTimes:
        return CPUTimes(
            self.total - other.total, self.user - other.user, self.kernel - other.kernel
        )


def pinnedTo(cpuSet: set[int] | None) -> Callable[[], None] | None:
    """
    A C{preexec_fn} for L{subprocess.Popen} that pins the child to
    C{cpuSet}, or L{None} to leave it where it is.
    """
    if not cpuSet:
        return None
    chosen = set(cpuSet)

    def pin() -> None:
        os.sched_setaffinity(0, chosen)

    return pin


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """
    Stop a process the benchmark started: C{SIGTERM} to its PID, then, if
    it is still running after C{timeout} seconds, C{SIGKILL} to it and each
    of its descendants, by PID.
    """
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        for pid in reversed(processTree(process.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def loopbackTwistd(logPath: Path) -> list[str]:
    """
    The start of the command line of a C{twistd udptime} in the foreground
    on 127.0.0.1, logging to C{logPath}: its options follow.
    """
    twistd = str(Path(sys.executable).parent / "twistd")
    return [
        twistd,
        "-n",
        "--pidfile=",
        f"--logfile={logPath}",
        "udptime",
        "--interface=127.0.0.1",
    ]
