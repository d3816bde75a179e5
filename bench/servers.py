"""
The servers udptime's benchmark measures, and starting and stopping them.

A server is one entry of L{THROUGHPUT_SERVERS} or L{ACCURACY_SERVERS}: its
label in the reports, the protocol it speaks, its kind (how it is started:
L{KINDS}) and the arguments of that kind.  Each starts on a free loopback
port, in a directory of its own, and is stopped by its PID.
"""

from __future__ import annotations

import base64
import contextlib
import json
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
from pathlib import Path
from types import TracebackType

from load import BENCH, BUILD, PROTOCOLS
from processes import pinnedTo, stop
from results import ROOT

from udptime.roughtimekeys import loadLongTermKey, writeNewKey

# Every udptime measurement keeps the whole admission policy on: per-client
# limits far above what one load generator address sends (so every request
# is checked and none is refused), a global cap above any rate reached.
UDPTIME_POLICY = ("--rate", "1000000", "--burst", "100000", "--global-rate", "1e8")


@dataclass(frozen=True)
class Server:
    """
    A server to benchmark.

    @ivar label: its name in the reports.
    @ivar protocol: the name of its protocol in L{load.PROTOCOLS}
        (C{nts}: NTP with NTS, the server's NTS-KE service on too).
    @ivar kind: how it is started, a key of L{KINDS}: C{udptime}, C{python}
        (C{bench/references.py}), C{c} (C{bench/cserver.c}), C{chronyd} or
        C{roughly} (C{roughly server run}, for Roughtime).
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
        if self.protocol == "nts" and not ntsAvailable():
            return False
        if self.kind == "chronyd":
            return chronydPath() is not None
        if self.kind == "python" and "uvloop" in self.arguments:
            return hasUvloop()
        if self.kind == "roughly":
            return os.access(roughlyPath(), os.X_OK)
        return True


def freePort(kind: socket.SocketKind = socket.SOCK_DGRAM) -> int:
    """
    A port free on 127.0.0.1 right now: UDP, or TCP for C{SOCK_STREAM}.
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ntsAvailable() -> bool:
    """
    Whether udptime's NTS can run here (the C{nts} extra is installed).
    """
    from udptime.ntske import ntsUnavailable

    return ntsUnavailable() is None


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


def udptimeCommand(server: Server, port: str, directory: str, kePort: str) -> list[str]:
    """
    C{twistd -n udptime} serving C{server}'s protocol on C{127.0.0.1:port},
    every policy on, logging into C{directory}; for NTS, its NTS-KE service
    on TCP port C{kePort}, with the certificate and key of
    L{ntsCertificates} in C{directory}.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    ntp = ["--port", "0", "--ntp-port", port, "--local-stratum", "1"]
    portArguments = {
        "text": ["--port", port],
        "ntp": ntp,
        "nts": [
            *ntp,
            "--nts-ke-port",
            kePort,
            "--nts-certificate",
            f"{directory}/{CERTIFICATE}",
            "--nts-private-key",
            f"{directory}/{PRIVATE_KEY}",
        ],
        "roughtime": [
            "--port",
            "0",
            "--roughtime-port",
            port,
            "--roughtime-key",
            str(roughtimeKey()),
            "--local-stratum",
            "1",
        ],
    }[server.protocol]
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


def referenceCommand(
    server: Server, port: str, directory: str, kePort: str
) -> list[str]:
    """
    One of the Python servers of C{bench/references.py}.
    """
    script = str(BENCH / "references.py")
    return [sys.executable, script, *server.arguments, server.protocol, port]


def cServerCommand(server: Server, port: str, directory: str, kePort: str) -> list[str]:
    """
    The C server, C{bench/cserver.c}.
    """
    return [str(BUILD / "cserver"), server.protocol, port]


def chronydConfiguration(port: str, directory: str, kePort: str | None) -> str:
    """
    The configuration of chronyd serving NTP on C{127.0.0.1:port}: its own
    pid file in C{directory}, no command sockets, C{local stratum 1}.  It
    answers the whole of 127.0.0.0/8, where the load generator's many
    clients are.  With a C{kePort}, it serves NTS too: NTS-KE on that TCP
    port, with the certificate and key of L{ntsCertificates} in
    C{directory}, where it also keeps its server keys.  No C{ratelimit}:
    chronyd's default, which answers every request.
    """
    nts = ""
    if kePort is not None:
        nts = (
            f"ntsport {kePort}\n"
            f"ntsservercert {directory}/{CERTIFICATE}\n"
            f"ntsserverkey {directory}/{PRIVATE_KEY}\n"
            f"ntsdumpdir {directory}\n"
        )
    return (
        f"port {port}\n"
        "bindaddress 127.0.0.1\n"
        "allow 127.0.0.0/8\n"
        "local stratum 1\n"
        "cmdport 0\n"
        "bindcmdaddress /\n"
        f"pidfile {directory}/chronyd.pid\n"
        f"{nts}"
    )


def chronydCommand(server: Server, port: str, directory: str, kePort: str) -> list[str]:
    """
    chronyd with L{chronydConfiguration} written into C{directory}, in the
    foreground (C{-d}) and never touching the clock (C{-x}); serving NTS
    when C{server} is an NTS server.
    """
    os.chmod(directory, 0o755)
    conf = os.path.join(directory, "chrony.conf")
    with open(conf, "w") as f:
        f.write(
            chronydConfiguration(
                port, directory, kePort if server.protocol == "nts" else None
            )
        )
    return [chronydPath() or "chronyd", "-d", "-x", "-f", conf]


def roughtimeKey() -> Path:
    """
    The Roughtime servers' long-term key file, C{bench/build/roughtime.key},
    made on first use (never committed: C{bench/build/} is not).
    """
    path = BUILD / "roughtime.key"
    if not path.exists():
        BUILD.mkdir(exist_ok=True)
        writeNewKey(str(path))
    return path


def roughlyPath() -> str:
    """
    roughly's program, in the virtualenv C{tests/install-peers.sh} makes.
    """
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    venv = os.environ.get("UDPTIME_ROUGHLY_VENV") or os.path.join(
        cache, "udptime-peers", "roughly-venv"
    )
    return os.path.join(venv, "bin", "roughly")


def roughlyCommand(server: Server, port: str, directory: str, kePort: str) -> list[str]:
    """
    C{roughly server run} with the benchmark's key, grease off (every
    response valid, as udptime's).
    """
    seed = base64.b64encode(loadLongTermKey(str(roughtimeKey())).private_bytes_raw())
    return [
        roughlyPath(),
        "server",
        "run",
        "--host",
        "127.0.0.1",
        "-p",
        port,
        "--private-key",
        seed.decode("ascii"),
        "--no-grease",
    ]


# The names of the NTS servers' certificate (a chain) and private key in
# their directories (as tests/certificates.py names them).
CERTIFICATE = "server-chain.pem"
PRIVATE_KEY = "server-key.pem"


def ntsCertificates(directory: str) -> str:
    """
    Make a new test CA and a certificate it signs for 127.0.0.1 in
    C{directory} (readable by chronyd, which drops its privileges: a
    throw-away key made for this run), and return the CA file's path.
    """
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    from tests.certificates import makeCertificates

    files = makeCertificates(directory)
    for path in (files.ca, files.certificate, files.key, files.leaf):
        os.chmod(path, 0o644)
    assert files.certificate.endswith(CERTIFICATE) and files.key.endswith(PRIVATE_KEY)
    return files.ca


def ntsRequest(kePort: int, ntpPort: int, caFile: str) -> dict[str, object]:
    """
    One authenticated NTS request made by C{bench/ntsrequest.py} (a key
    exchange on C{kePort}, the request checked against the server on
    C{ntpPort}), as it reports it.

    @raise RuntimeError: when it fails.
    """
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "ntsrequest.py"),
            "--ke-port",
            str(kePort),
            "--ntp-port",
            str(ntpPort),
            "--ca-file",
            caFile,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode:
        raise RuntimeError(f"no NTS request: {done.stderr.strip()}")
    made: dict[str, object] = json.loads(done.stdout)
    return made


KINDS: dict[str, Callable[[Server, str, str, str], list[str]]] = {
    "udptime": udptimeCommand,
    "python": referenceCommand,
    "c": cServerCommand,
    "chronyd": chronydCommand,
    "roughly": roughlyCommand,
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
        self.kePort = freePort(socket.SOCK_STREAM) if server.protocol == "nts" else 0
        self.payload: bytes | None = None
        self.ntsRequest: dict[str, object] | None = None

    def start(self) -> Running:
        """
        Start the server and wait until it answers; for NTS, make the
        request the load generator will replay (L{payload}, checked as
        L{ntsRequest} says).

        @raise RuntimeError: when it does not answer within 20 seconds, or
            no NTS request could be made.
        """
        caFile = ntsCertificates(self.directory) if self.kePort else ""
        command = KINDS[self.server.kind](
            self.server, str(self.port), self.directory, str(self.kePort)
        )
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
        if self.kePort:
            try:
                self.ntsRequest = ntsRequest(self.kePort, self.port, caFile)
            except RuntimeError as e:
                printed = self.output()
                self.stop()
                raise RuntimeError(f"{self.server.label}: {e}\n{printed}") from None
            self.payload = bytes.fromhex(str(self.ntsRequest.pop("request")))
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
    with C{PORT} for its port, C{KEPORT} for its NTS-KE port, C{DIR} for its
    directory and C{KEY} for a private key given on the command line
    (roughly's).
    """
    if server.kind == "chronyd":
        kePort = "KEPORT" if server.protocol == "nts" else None
        return {
            "command": "chronyd -d -x -f DIR/chrony.conf",
            "configuration": "; ".join(
                chronydConfiguration("PORT", "DIR", kePort).splitlines()
            ),
        }
    command = KINDS[server.kind](server, "PORT", "DIR", "KEPORT")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    shown: list[str] = []
    for argument in command:
        if shown and shown[-1] == "--private-key":
            argument = "KEY"
        elif argument == sys.executable:
            argument = "python"
        elif argument == twistd:
            argument = "twistd"
        elif argument.startswith(str(BENCH)):
            argument = "bench" + argument[len(str(BENCH)) :]
        elif argument == roughlyPath():
            argument = "roughly"
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
    Server("udptime roughtime", "roughtime", "udptime", baseline=True),
    Server("roughly server run", "roughtime", "roughly"),
    Server("udptime nts", "nts", "udptime", baseline=True),
    Server("chronyd", "nts", "chronyd"),
)

ACCURACY_SERVERS: tuple[Server, ...] = (
    Server("udptime, kernel timestamps", "ntp", "udptime", baseline=True),
    Server(
        "udptime, kernel timestamps, Python send step",
        "ntp",
        "udptime",
        ("--no-compiled-send",),
    ),
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
