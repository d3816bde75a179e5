"""
The servers udptime's benchmark measures, and starting and stopping them.

A server is one entry of L{THROUGHPUT_SERVERS} or L{ACCURACY_SERVERS}: its
label in the reports, the protocol it speaks, its kind (how it is started:
L{KINDS}) and the arguments of that kind.  Each starts on a free loopback
port, in a directory of its own, and is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

from load import BENCH, BUILD, PROTOCOLS
from processes import pinnedTo, stop

# Every udptime measurement keeps the whole admission policy on: per-client
# limits far above what one load generator address sends (so every request
# is checked and none is refused), a global cap above any rate reached.
UDPTIME_POLICY = ("--rate", "1000000", "--burst", "100000", "--global-rate", "1e8")


@dataclass(frozen=True)
class Server:
    """
    A server to benchmark.

    @ivar label: its name in the reports.
    @ivar protocol: the name of its protocol in L{load.PROTOCOLS}.
    @ivar kind: how it is started, a key of L{KINDS}: C{udptime}, C{python}
        (C{bench/references.py}), C{c} (C{bench/cserver.c}) or C{chronyd}.
    @ivar arguments: extra arguments (udptime options, or the reference's
        kind).
    @ivar workers: udptime worker processes (0: serve in one process).
    @ivar baseline: whether the other servers of its protocol are compared
        with it (udptime's own, one process, defaults).
    """

    label: str
    protocol: str
    kind: str
    arguments: tuple[str, ...] = ()
    workers: int = 0
    baseline: bool = False

    @property
    def key(self) -> str:
        """
        The server's unique name in a run: C{protocol: label}.
        """
        return f"{self.protocol}: {self.label}"

    @property
    def pinned(self) -> bool:
        """
        Whether it is pinned to one CPU (all but udptime's worker runs).
        """
        return self.workers == 0

    def available(self) -> bool:
        """
        Whether it can run here (uvloop and chronyd are optional).
        """
        if self.kind == "chronyd":
            return chronydPath() is not None
        if self.kind == "python" and "uvloop" in self.arguments:
            return hasUvloop()
        return True


def freePort() -> int:
    """
    A UDP port free on 127.0.0.1 right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def answers(port: int, protocol: str, timeout: float) -> bool:
    """
    Whether the server on C{127.0.0.1:port} answers a request of
    C{protocol} within C{timeout} seconds.
    """
    payload = PROTOCOLS[protocol].probe
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            sock.sendto(payload, ("127.0.0.1", port))
            try:
                sock.recvfrom(2048)
            except TimeoutError:
                continue
            return True
    return False


def chronydPath() -> str | None:
    """
    Where chronyd is installed, or L{None}.
    """
    for candidate in ("chronyd", "/usr/sbin/chronyd", "/sbin/chronyd"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def hasUvloop() -> bool:
    """
    Whether uvloop is installed (the C{bench} extra).
    """
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --- how each kind of server is started -------------------------------------


def udptimeCommand(server: Server, port: str, directory: str) -> list[str]:
    """
    C{twistd -n udptime} serving C{server}'s protocol on C{127.0.0.1:port},
    every policy on, logging into C{directory}.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    portArguments = (
        ["--port", port]
        if server.protocol == "text"
        else ["--port", "0", "--ntp-port", port, "--local-stratum", "1"]
    )
    workers = ["--workers", str(server.workers)] if server.workers else []
    return [
        twistd,
        "-n",
        "--pidfile=",
        f"--logfile={os.path.join(directory, 'server.log')}",
        "udptime",
        *portArguments,
        "--interface",
        "127.0.0.1",
        "--timezone",
        "UTC",
        *UDPTIME_POLICY,
        *workers,
        *server.arguments,
    ]


def referenceCommand(server: Server, port: str, directory: str) -> list[str]:
    """
    One of the Python servers of C{bench/references.py}.
    """
    script = str(BENCH / "references.py")
    return [sys.executable, script, *server.arguments, server.protocol, port]


def cServerCommand(server: Server, port: str, directory: str) -> list[str]:
    """
    The C server, C{bench/cserver.c}.
    """
    return [str(BUILD / "cserver"), server.protocol, port]


def chronydConfiguration(port: str, directory: str) -> str:
    """
    The configuration of chronyd serving NTP on C{127.0.0.1:port}: its own
    pid file in C{directory}, no command sockets, C{local stratum 1}.  It
    answers the whole of 127.0.0.0/8, where the load generator's many
    clients are.
    """
    return (
        f"port {port}\n"
        "bindaddress 127.0.0.1\n"
        "allow 127.0.0.0/8\n"
        "local stratum 1\n"
        "cmdport 0\n"
        "bindcmdaddress /\n"
        f"pidfile {directory}/chronyd.pid\n"
    )


def chronydCommand(server: Server, port: str, directory: str) -> list[str]:
    """
    chronyd with L{chronydConfiguration} written into C{directory}, in the
    foreground (C{-d}) and never touching the clock (C{-x}).
    """
    os.chmod(directory, 0o755)
    conf = os.path.join(directory, "chrony.conf")
    with open(conf, "w") as f:
        f.write(chronydConfiguration(port, directory))
    return [chronydPath() or "chronyd", "-d", "-x", "-f", conf]


KINDS: dict[str, Callable[[Server, str, str], list[str]]] = {
    "udptime": udptimeCommand,
    "python": referenceCommand,
    "c": cServerCommand,
    "chronyd": chronydCommand,
}


class Running:
    """
    A started server: its process, port and directory.  A context manager:
    started on entry, stopped on exit.
    """

    def __init__(self, server: Server, serverCPUs: set[int]) -> None:
        self.server = server
        self.port = freePort()
        self.directory = tempfile.mkdtemp(prefix="udptime-bench-")
        self.logPath = os.path.join(self.directory, "server.log")
        self.serverCPUs = serverCPUs
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Running:
        """
        Start the server and wait until it answers.

        @raise RuntimeError: when it does not answer within 20 seconds.
        """
        command = KINDS[self.server.kind](self.server, str(self.port), self.directory)
        with open(os.path.join(self.directory, "stdout"), "wb") as output:
            self.process = subprocess.Popen(
                command,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=pinnedTo(self.serverCPUs),
            )
        if not answers(self.port, self.server.protocol, 20.0):
            printed = self.output()
            self.stop()
            raise RuntimeError(f"{self.server.label} did not answer:\n{printed}")
        if self.server.workers:
            self.waitForLog("service listening on", 1 + self.server.workers, 20.0)
        return self

    def waitForLog(self, text: str, count: int, timeout: float) -> None:
        """
        Wait until C{text} appears C{count} times in the server's log.

        @raise RuntimeError: when it does not within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.server.label}: no {count} x {text!r}:\n{self.log()}")

    def log(self) -> str:
        """
        The server's log file so far (udptime's).
        """
        with contextlib.suppress(OSError), open(self.logPath, errors="replace") as f:
            return f.read()
        return ""

    def output(self) -> str:
        """
        What the server printed, and its log.
        """
        path = os.path.join(self.directory, "stdout")
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            return f.read() + self.log()
        return self.log()

    @property
    def pid(self) -> int:
        """
        The server's process id.
        """
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """
        Stop the server by its PID and remove its directory.
        """
        if self.process is not None:
            stop(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Running:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def describe(server: Server) -> dict[str, str]:
    """
    How C{server} is run, for the results: its command line (and for
    chronyd its configuration, one line per directive joined with C{; }),
    with C{PORT} for its port and C{DIR} for its directory.
    """
    if server.kind == "chronyd":
        return {
            "command": "chronyd -d -x -f DIR/chrony.conf",
            "configuration": "; ".join(
                chronydConfiguration("PORT", "DIR").splitlines()
            ),
        }
    command = KINDS[server.kind](server, "PORT", "DIR")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    shown = []
    for argument in command:
        if argument == sys.executable:
            argument = "python"
        elif argument == twistd:
            argument = "twistd"
        elif argument.startswith(str(BENCH)):
            argument = "bench" + argument[len(str(BENCH)) :]
        shown.append(argument)
    return {"command": shlex.join(shown)}


# --- the lists ----------------------------------------------------------------

THROUGHPUT_SERVERS: tuple[Server, ...] = (
    Server("udptime text", "text", "udptime", baseline=True),
    Server("Twisted DatagramProtocol", "text", "python", ("twisted",)),
    Server("asyncio", "text", "python", ("asyncio",)),
    Server("uvloop", "text", "python", ("uvloop",)),
    Server("blocking recvfrom loop", "text", "python", ("blocking",)),
    Server("C recvmmsg server", "text", "c"),
    Server("udptime ntp", "ntp", "udptime", baseline=True),
    Server("udptime ntp, no kernel ts", "ntp", "udptime", ("--no-kernel-timestamps",)),
    Server("udptime ntp, kernel ts", "ntp", "udptime", ("--kernel-timestamps",)),
    Server("Twisted DatagramProtocol", "ntp", "python", ("twisted",)),
    Server("asyncio", "ntp", "python", ("asyncio",)),
    Server("uvloop", "ntp", "python", ("uvloop",)),
    Server("blocking recvfrom loop", "ntp", "python", ("blocking",)),
    Server("chronyd", "ntp", "chronyd"),
    Server("C recvmmsg server", "ntp", "c"),
)

ACCURACY_SERVERS: tuple[Server, ...] = (
    Server("udptime, kernel timestamps", "ntp", "udptime", baseline=True),
    Server(
        "udptime, no kernel timestamps", "ntp", "udptime", ("--no-kernel-timestamps",)
    ),
    Server("chronyd", "ntp", "chronyd"),
)


def selected(servers: Iterable[Server], only: Sequence[str] | None) -> list[Server]:
    """
    The available servers among C{servers} whose C{protocol: label}
    contains one of C{only} (all of them when C{only} is empty).
    """
    return [
        s
        for s in servers
        if s.available() and (not only or any(o in s.key for o in only))
    ]


def throughputServers(
    workers: Sequence[int], only: Sequence[str] | None
) -> list[Server]:
    """
    The servers of a throughput run: L{THROUGHPUT_SERVERS}, then udptime's
    text service with each number of C{workers}.
    """
    chosen = list(THROUGHPUT_SERVERS)
    for count in workers:
        chosen.append(
            Server(f"udptime text, {count} workers", "text", "udptime", workers=count)
        )
    return selected(chosen, only)


def accuracyServers(only: Sequence[str] | None) -> list[Server]:
    """
    The NTP servers of an accuracy run.
    """
    return selected(ACCURACY_SERVERS, only)
