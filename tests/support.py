"""
Shared test support: free loopback ports, real C{twistd} server processes,
blocking UDP queries with deadlines, a recording datagram transport, and
skips for missing third-party peers.

Set C{UDPTIME_REQUIRE_PEERS=1} (CI does) to turn "peer not installed" skips
into failures, so that a missing install step cannot hide behind a skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from udptime.workers import STOP_TIMEOUT

LISTENING = "service listening on "

CONTAINER_SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "deploy",
    "container.py",
)
"""The container image's entry point and health check."""

T = TypeVar("T")


def waitFor(
    check: Callable[[], T], what: str, timeout: float = 15.0, interval: float = 0.02
) -> T:
    """
    Poll C{check()} until it returns a true value, for at most C{timeout}
    seconds (for what only a log file or C{/proc} can tell); return it.

    @param interval: seconds between two calls of C{check} (a check that
        asks a server counts against its rate limits: ask at a pace its
        limits allow).
    @raise AssertionError: C{what} did not happen in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)  # polling, bounded by the deadline


STOP_DEADLINE = 3 * STOP_TIMEOUT
"""
Seconds a server a test started has to exit after SIGTERM before the test
kills it: well over the time a supervisor gives its workers before it kills
them (L{udptime.workers.STOP_TIMEOUT}), so that on a loaded machine a test
sees the exit the server decided on, not its own impatience.
"""


def stopProcess(process: subprocess.Popen[Any], timeout: float = STOP_DEADLINE) -> None:
    """
    Stop a process this test started, by its PID: SIGTERM, then SIGKILL if
    it has not exited within C{timeout} seconds.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def containerScript() -> ModuleType:
    """
    L{CONTAINER_SCRIPT} as a module (it is a script, not a package).
    """
    spec = importlib.util.spec_from_file_location("udptime_container", CONTAINER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def freePrivilegedPort() -> int:
    """
    A UDP port below 1024 that is free on both 127.0.0.1 and ::1.
    """
    for port in range(1023, 600, -1):
        if _portFree(port):
            return port
    raise RuntimeError("no free UDP port below 1024")


def requirePeer(command: str, why: str = "") -> str:
    """
    The path of the program C{command}, or skip the test with a clear reason
    when it is not installed (fail instead under C{UDPTIME_REQUIRE_PEERS=1}).
    """
    path = shutil.which(command) or next(
        (
            p
            for d in ("/usr/sbin", "/sbin", "/usr/local/sbin")
            if os.access(p := os.path.join(d, command), os.X_OK)
        ),
        None,
    )
    if path is None:
        missing(f"{command} is not installed{': ' + why if why else ''}")
    assert path is not None
    return path


def missing(reason: str) -> None:
    """
    Skip for a missing peer or facility, or fail when CI requires peers.
    """
    if os.environ.get("UDPTIME_REQUIRE_PEERS") == "1":
        raise AssertionError(f"required test peer missing: {reason}")
    raise SkipTest(reason)


def assertCannotListen(
    case: SynchronousTestCase, server: TwistdServer, service: str, where: str
) -> None:
    """
    Start C{server}, which must fail: its port is taken.  It exits with
    status 1, after one line on standard error that names its service
    C{service} and the address C{where}, and no traceback.
    """
    case.addCleanup(server.cleanup)
    case.assertRaises(RuntimeError, server.start)
    assert server.process is not None
    case.assertEqual(server.process.returncode, 1)
    case.assertEqual(
        server.stderr(),
        f"twistd udptime: {service} service cannot listen on {where} (UDP):"
        " Address already in use\n",
    )
    case.assertNotIn("Traceback", server.log())


def freePort() -> int:
    """
    A UDP port number that is free on every address right now, so that a
    server may bind it on 127.0.0.1, ::1 or all of them (the default).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if _portFree(port):
            return port
    raise RuntimeError("no free UDP port found")


ADDRESS_IN_USE = "Address already in use"
"""What twistd says when a port it was told to listen on is taken."""


def startOnFreePorts(
    count: int,
    arguments: Callable[[list[int]], Sequence[str]],
    listeners: int = 1,
    tries: int = 5,
    prepare: Callable[[TwistdServer], object] = lambda server: None,
    **server: Any,
) -> tuple[TwistdServer, list[int]]:
    """
    A started L{TwistdServer} (its other arguments C{server}) whose plugin
    arguments are C{arguments(ports)} for C{count} distinct ports free when
    picked (L{freePort}; the services take no port 0).  A port found free
    can be taken by another process before twistd binds it: then twistd
    exits saying so, and the server is started again on other ports, at
    most C{tries} times in all.  C{prepare} is called with each server
    before it starts (to write files into its directory, say).  The caller
    cleans up the server (C{addCleanup(server.cleanup)}).
    """
    for attempt in range(tries):
        ports: list[int] = []
        while len(ports) < count:
            port = freePort()
            if port not in ports:
                ports.append(port)
        process = TwistdServer(list(arguments(ports)), **server)
        try:
            prepare(process)
            process.start(listeners)
        except RuntimeError as error:
            process.cleanup()
            if ADDRESS_IN_USE not in str(error) or attempt == tries - 1:
                raise
            continue
        return process, ports
    raise AssertionError("unreachable: the last try returns or raises")


def _portFree(port: int) -> bool:
    """
    Whether UDP port C{port} can be bound on every IPv4 and IPv6 address:
    a dual-stack socket on C{::} conflicts with a socket bound to any
    address, loopback or not, on that port.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::", port))
    except OSError:
        return False
    return True


def twistdPath() -> str:
    """
    The C{twistd} script of the Python running the tests.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("twistd")
    if found is None:
        raise RuntimeError("twistd not found beside the test interpreter")
    return found


def udptimePath() -> str:
    """
    The C{udptime} console script installed beside the test interpreter.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "udptime")
    if not os.access(beside, os.X_OK):
        raise RuntimeError(f"the udptime console script is not installed: {beside}")
    return beside


def udpQuery(
    payload: bytes,
    host: str,
    port: int,
    timeout: float = 2.0,
    source: tuple[str, int] | None = None,
) -> bytes:
    """
    Send one datagram and return the first reply from C{(host, port)}.

    @raise TimeoutError: no reply within C{timeout} seconds.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if source is not None:
            sock.bind(source)
        sock.settimeout(timeout)
        sock.sendto(payload, (host, port))
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                raise TimeoutError(f"no reply from {host}:{port}") from None
            if addr[1] == port:
                return data


def noReply(
    payload: bytes,
    host: str,
    port: int,
    wait: float = 0.3,
    source: tuple[str, int] | None = None,
) -> bool:
    """
    True when C{payload} gets no reply within C{wait} seconds.
    """
    try:
        udpQuery(payload, host, port, wait, source)
    except TimeoutError:
        return True
    return False


class TwistdServer:
    """
    A real C{twistd -n udptime ...} process for integration tests.

    Start it with L{start}, which returns once every enabled service has
    logged that it listens; L{stop} sends SIGTERM and returns the exit
    status (the log stays readable); L{cleanup} also removes the files.  Use
    it as a context manager or pass L{cleanup} to C{addCleanup}.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        twistdArguments: Sequence[str] = (),
        env: dict[str, str] | None = None,
        preexec: Sequence[str] = (),
        newSession: bool = False,
        plugin: str | None = "udptime",
    ) -> None:
        """
        @param newSession: start twistd in a session and process group of
            its own, which L{stop} can then signal as a whole.
        @param plugin: the twistd plugin to run with C{arguments}, or
            L{None} when C{twistdArguments} say what to run (C{-y FILE}).
        """
        self.plugin = plugin
        self.arguments = list(arguments)
        self.newSession = newSession
        self.twistdArguments = list(twistdArguments)
        self.env = env
        self.preexec = list(preexec)
        self.directory = tempfile.mkdtemp(prefix="udptime-twistd-")
        self.logPath = os.path.join(self.directory, "twistd.log")
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            *self.preexec,
            twistdPath(),
            "-n",
            "--pidfile=",
            f"--logfile={self.logPath}",
            *self.twistdArguments,
            *([self.plugin] if self.plugin is not None else []),
            *self.arguments,
        ]

    def start(self, listeners: int = 1, timeout: float = 60.0) -> TwistdServer:
        """
        Start the server and wait (bounded) until C{listeners} services log
        that they listen: up to C{timeout} seconds, as a machine busy with
        other work may take tens of seconds to start Python and twistd.
        """
        env = dict(os.environ)
        env.update(self.env or {})
        # The child keeps its own copy of the descriptor.
        with open(os.path.join(self.directory, "stderr"), "wb") as stderr:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=self.newSession,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(LISTENING) >= listeners:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"twistd exited with {self.process.returncode}:\n"
                    + self.log()
                    + self.stderr()
                )
            time.sleep(0.02)  # polling a log file, bounded by the deadline
        self.stop()
        raise RuntimeError("twistd did not start listening in time:\n" + self.log())

    def startOrCleanUp(self, listeners: int = 1) -> TwistdServer:
        """
        L{start}, for a caller that cannot register L{cleanup} first (a
        helper that returns the server): when it fails, the server is
        cleaned up before the error goes on.
        """
        try:
            return self.start(listeners)
        except BaseException:
            self.cleanup()
            raise

    def log(self) -> str:
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stderr(self) -> str:
        with open(os.path.join(self.directory, "stderr"), errors="replace") as f:
            return f.read()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(
        self,
        timeout: float = STOP_DEADLINE,
        number: int = signal.SIGTERM,
        wholeGroup: bool = False,
    ) -> int:
        """
        Send SIGTERM (or signal C{number}) and wait for the exit; return the
        exit status.

        @param wholeGroup: send the signal to twistd's process group (which
            needs C{newSession}), as a terminal's Ctrl-C does.
        """
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            if wholeGroup:
                assert self.newSession, "only a server in its own group"
                os.killpg(process.pid, number)
            else:
                process.send_signal(number)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def cleanup(self) -> None:
        """
        Stop the server if it runs and remove its directory and log.
        """
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> TwistdServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


class RecordingTransport:
    """
    A datagram transport that records what is written, for unit tests that
    call C{datagramReceived} directly.

    @ivar written: C{(data, addr)} pairs, in order.
    @ivar port: the port L{getHost} reports.
    """

    def __init__(self, fail: BaseException | None = None, port: int = 0) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.fail = fail
        self.port = port

    def write(self, data: bytes, addr: Any = None) -> None:
        if self.fail is not None:
            raise self.fail
        self.written.append((data, addr))

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", "127.0.0.1", self.port)


def deliver(protocol: Any, data: bytes, addr: Any, received: float) -> None:
    """
    Hand C{protocol} (connected to a transport, such as a
    L{RecordingTransport}) the datagram C{data} from C{addr} as a port does
    that took its receive time from the kernel: C{received}, not the
    protocol's clock.  Otherwise it goes the way C{datagramReceived} sends
    it: decided, sent through the transport and counted by the protocol's
    reply path.
    """
    replies = protocol.replies
    assert replies is not None, "connect the protocol to a transport first"
    replies.tally(1, replies.handle(data, addr, received))
