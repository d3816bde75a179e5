"""
Tests for L{udptime.activation} (systemd socket activation) and
L{udptime.notify} (readiness notification): real sockets placed at the
descriptors the environment names, and the real C{systemd-socket-activate}.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.prometheus import freeTCPPort
from tests.support import (
    TwistdServer,
    freePort,
    noReply,
    requirePeer,
    stopProcess,
    udpQuery,
    waitFor,
)
from tests.test_operations import NTP_REQUEST, get
from udptime.activation import (
    ActivationError,
    activatedSockets,
)
from udptime.notify import notify, notifyReady, notifyStopping
from udptime.ntp import NTPPacket

BASE = 200
"""Descriptors from here on stand for systemd's 3, 4, ... in unit tests."""


def udp(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    return sock


def tcp(listen: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if listen:
        sock.listen()
    return sock


class ActivatedSocketsTests(SynchronousTestCase):
    """
    L{activatedSockets} reads the environment, checks each descriptor and
    adopts the sockets by name.
    """

    def place(self, *descriptors: int | socket.socket) -> list[int]:
        """
        Put each socket (or descriptor) at C{BASE}, C{BASE + 1}, ... as
        systemd puts them at 3, 4, ...; each is closed after the test.
        """
        placed = []
        for offset, each in enumerate(descriptors):
            fd = each if isinstance(each, int) else each.fileno()
            target = BASE + offset
            os.dup2(fd, target, inheritable=False)
            self.addCleanup(self.closeQuietly, target)
            if isinstance(each, socket.socket):
                each.close()
            placed.append(target)
        return placed

    @staticmethod
    def closeQuietly(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)

    def environ(self, count: int, names: Sequence[str] | None) -> dict[str, str]:
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(count), "X": "y"}
        if names is not None:
            env["LISTEN_FDNAMES"] = ":".join(names)
        return env

    def activate(
        self,
        names: Sequence[str] | None,
        *sockets: int | socket.socket,
        expected: Sequence[str] | None = None,
    ) -> dict[str, list[socket.socket]]:
        self.place(*sockets)
        env = self.environ(len(sockets), names)
        adopted = activatedSockets(env, expected, start=BASE)
        self.assertEqual(env, {"X": "y"})
        result = {}
        for name, each in adopted.items():
            for activated in each:
                self.addCleanup(activated.socket.close)
                self.assertEqual(activated.name, name)
            result[name] = [activated.socket for activated in each]
        return result

    def assertRefused(
        self,
        fragment: str,
        names: Sequence[str] | None,
        *sockets: int | socket.socket,
        expected: Sequence[str] | None = None,
    ) -> None:
        error = self.assertRaises(
            ActivationError, self.activate, names, *sockets, expected=expected
        )
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertIn(fragment, message)

    def test_notActivated(self) -> None:
        """
        Without C{LISTEN_FDS}, or with C{LISTEN_PID} naming another process
        (a child that inherited the environment), there is nothing; the
        variables are removed either way.
        """
        self.assertEqual(activatedSockets({}), {})
        env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "ntp"}
        self.assertEqual(activatedSockets(env, pid=2), {})
        self.assertEqual(env, {})

    def test_named(self) -> None:
        """
        Named datagram sockets, IPv4 and IPv6, are adopted non-blocking;
        the passed descriptors are closed, and the sockets keep their
        addresses.
        """
        ntp, text = udp(), udp(socket.AF_INET6)
        addresses = [ntp.getsockname()[:2], text.getsockname()[:2]]
        [first, second] = self.place(ntp, text)
        env = self.environ(2, ["ntp", "text"])
        adopted = activatedSockets(env, start=BASE)
        for each in adopted.values():
            for activated in each:
                self.addCleanup(activated.socket.close)
        self.assertEqual(sorted(adopted), ["ntp", "text"])
        [ntpSocket] = adopted["ntp"]
        [textSocket] = adopted["text"]
        self.assertEqual(ntpSocket.descriptor, first)
        self.assertEqual(textSocket.descriptor, second)
        self.assertEqual(ntpSocket.socket.family, socket.AF_INET)
        self.assertEqual(textSocket.socket.family, socket.AF_INET6)
        self.assertEqual(
            [ntpSocket.address, textSocket.address],
            [(str(a[0]), a[1]) for a in addresses],
        )
        for activated in ntpSocket, textSocket:
            self.assertFalse(activated.socket.getblocking())
            self.assertFalse(os.get_inheritable(activated.socket.fileno()))
        for fd in first, second:
            self.assertRaises(OSError, os.fstat, fd)
        # They work.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"x", ntpSocket.address)
            waitFor(lambda: self.receive(ntpSocket.socket), "the datagram")

    @staticmethod
    def receive(sock: socket.socket) -> bytes | None:
        try:
            return sock.recv(10)
        except BlockingIOError:
            return None

    def test_sameName(self) -> None:
        """
        Several sockets may serve one service (IPv4 and IPv6).
        """
        adopted = self.activate(["ntp", "ntp"], udp(), udp(socket.AF_INET6))
        self.assertEqual(
            [s.family for s in adopted["ntp"]], [socket.AF_INET, socket.AF_INET6]
        )

    def test_stream(self) -> None:
        """
        A listening stream socket serves C{metrics} or C{nts-ke}.
        """
        adopted = self.activate(["metrics", "nts-ke"], tcp(), tcp())
        self.assertEqual(sorted(adopted), ["metrics", "nts-ke"])
        self.assertEqual(adopted["metrics"][0].type, socket.SOCK_STREAM)

    def test_unnamedOne(self) -> None:
        """
        Without names (or with systemd's default ones), a socket is taken
        for the only expected service of its type, when it is the only
        unnamed socket of that type.
        """
        for names in None, ["udptime.socket"], ["unknown"]:
            adopted = self.activate(names, udp(), expected=["ntp", "metrics"])
            self.assertEqual(list(adopted), ["ntp"])
        adopted = self.activate(
            ["unknown", "unknown"], udp(), tcp(), expected=["time", "metrics"]
        )
        self.assertEqual(sorted(adopted), ["metrics", "time"])

    def test_unnamedAmbiguous(self) -> None:
        """
        Unnamed sockets that could serve several services, or several
        unnamed sockets of one type, are refused.
        """
        self.assertRefused("FileDescriptorName=", None, udp(), expected=["ntp", "time"])
        self.assertRefused("FileDescriptorName=", None, udp())
        self.assertRefused(
            "FileDescriptorName=",
            ["udptime.socket"] * 2,
            udp(),
            udp(),
            expected=["ntp"],
        )

    def test_unknownName(self) -> None:
        self.assertRefused("names no udptime service", ["chronyd"], udp())

    def test_notExpected(self) -> None:
        self.assertRefused("not enabled", ["daytime"], udp(), expected=["ntp"])

    def test_wrongType(self) -> None:
        self.assertRefused("needs a datagram socket (ListenDatagram=)", ["ntp"], tcp())
        self.assertRefused("needs a stream socket (ListenStream=)", ["metrics"], udp())

    def test_wrongFamily(self) -> None:
        one, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(other.close)
        self.assertRefused("not an IPv4 or IPv6 socket", ["echo"], one)

    def test_unbound(self) -> None:
        self.assertRefused(
            "not bound to a port",
            ["ntp"],
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        )

    def test_notListening(self) -> None:
        self.assertRefused("does not listen", ["metrics"], tcp(listen=False))

    def test_notSocket(self) -> None:
        read, write = os.pipe()
        self.addCleanup(os.close, write)
        self.assertRefused("is not a socket", ["ntp"], read)

    def test_notOpen(self) -> None:
        env = self.environ(1, ["ntp"])
        error = self.assertRaises(ActivationError, activatedSockets, env, start=BASE)
        self.assertIn("descriptor 200 (ntp) is not open", str(error))

    def test_malformed(self) -> None:
        for env, fragment in [
            ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, "LISTEN_PID"),
            ({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}, "LISTEN_FDS"),
            ({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "two"}, "LISTEN_FDS"),
            (
                {
                    "LISTEN_PID": str(os.getpid()),
                    "LISTEN_FDS": "2",
                    "LISTEN_FDNAMES": "ntp",
                },
                "1 names for 2 sockets",
            ),
        ]:
            error = self.assertRaises(
                ActivationError, activatedSockets, env, start=BASE
            )
            self.assertIn(fragment, str(error))

    def test_nothingClosedOnError(self) -> None:
        """
        When one socket is refused, no passed descriptor has been closed or
        changed: the error leaves them as they were.
        """
        good = udp()
        [first, _] = self.place(good, tcp())
        env = self.environ(2, ["ntp", "time"])
        self.assertRaises(ActivationError, activatedSockets, env, start=BASE)
        with socket.socket(fileno=os.dup(first)) as probe:
            self.assertTrue(probe.getblocking())


class SocketActivateTests(SynchronousTestCase):
    """
    The real C{systemd-socket-activate} starts a Twisted program on the first
    datagram, which adopts the socket with L{activatedSockets} and
    C{adoptDatagramPort} and answers it.
    """

    def activated(self, host: str, name: str) -> None:
        command = requirePeer("systemd-socket-activate", "socket activation")
        port = freePort()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        directory = tempfile.mkdtemp(prefix="udptime-activate-")
        self.addCleanup(shutil.rmtree, directory, True)
        stderrPath = os.path.join(directory, "stderr")
        server = os.path.join(os.path.dirname(__file__), "activated_server.py")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        with open(stderrPath, "wb") as stderr:
            process = subprocess.Popen(
                [
                    command,
                    "--datagram",
                    "-l",
                    where,
                    f"--fdname={name}",
                    sys.executable,
                    server,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )

        self.addCleanup(stopProcess, process)

        def log() -> str:
            with open(stderrPath, errors="replace") as f:
                return f.read()

        waitFor(lambda: "Listening on" in log() or process.poll() is not None, where)
        self.assertIsNone(process.poll(), log())
        family = "AF_INET6" if ":" in host else "AF_INET"
        # The first datagram starts the program and is still answered.
        reply = udpQuery(b"first", host, port, timeout=20.0)
        self.assertEqual(reply, f"{name} {family} first".encode())
        self.assertEqual(
            udpQuery(b"again", host, port), f"{name} {family} again".encode()
        )
        stopProcess(process)
        self.assertEqual(process.returncode, 0, log())

    def test_IPv4(self) -> None:
        self.activated("127.0.0.1", "text")

    def test_IPv6(self) -> None:
        self.activated("::1", "ntp")


class NotifyTests(SynchronousTestCase):
    """
    L{notify} sends C{sd_notify} messages to the datagram socket named in
    C{NOTIFY_SOCKET}.
    """

    def listener(self, abstract: bool) -> tuple[socket.socket, str]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = f"udptime-notify-test-{os.getpid()}-{id(sock)}"
            sock.bind("\0" + name)
            return sock, "@" + name
        directory = tempfile.mkdtemp(prefix="udptime-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        sock.bind(path)
        return sock, path

    def test_path(self) -> None:
        sock, address = self.listener(abstract=False)
        self.assertTrue(notifyReady("serving ntp", {"NOTIFY_SOCKET": address}))
        self.assertEqual(sock.recv(100), b"READY=1\nSTATUS=serving ntp")

    def test_abstract(self) -> None:
        sock, address = self.listener(abstract=True)
        self.assertTrue(notifyStopping({"NOTIFY_SOCKET": address}))
        self.assertEqual(sock.recv(100), b"STOPPING=1")
        self.assertTrue(notifyReady("two\nlines", {"NOTIFY_SOCKET": address}))
        self.assertEqual(sock.recv(100), b"READY=1\nSTATUS=two lines")

    def test_noManager(self) -> None:
        self.assertFalse(notify("READY=1", {}))
        self.assertFalse(notifyReady(environ={"NOTIFY_SOCKET": ""}))

    def test_unreachable(self) -> None:
        self.assertRaises(
            OSError, notify, "READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}
        )
        self.assertRaises(OSError, notify, "READY=1", {"NOTIFY_SOCKET": "relative"})


class TwistdActivationTests(SynchronousTestCase):
    """
    The real C{systemd-socket-activate} passes sockets to a real C{twistd
    udptime}, which serves them (and only them) as the services they are
    named after, alone or with workers; sockets it cannot use are one line
    on standard error.
    """

    def activate(
        self,
        listen: Sequence[str],
        names: Sequence[str],
        arguments: Sequence[str],
        datagram: bool = True,
    ) -> TwistdServer:
        """
        Start C{systemd-socket-activate} listening on C{listen}, its sockets
        named C{names}, to run C{twistd -n udptime *arguments} on the first
        datagram or connection; return once it listens.
        """
        command = requirePeer("systemd-socket-activate", "socket activation")
        preexec = [command, *(["--datagram"] if datagram else [])]
        for where in listen:
            preexec += ["-l", where]
        preexec.append(f"--fdname={':'.join(names)}")
        server = TwistdServer(arguments, preexec=preexec)
        self.addCleanup(server.cleanup)
        # Nothing to wait for in twistd's log before the first datagram.
        server.start(listeners=0)
        waitFor(
            lambda: (
                server.stderr().count("Listening on") == len(listen)
                or (server.process is not None and server.process.poll() is not None)
            ),
            "systemd-socket-activate listening",
        )
        assert server.process is not None
        self.assertIsNone(server.process.poll(), server.stderr())
        return server

    def assertNTP(self, host: str, port: int, stratum: int) -> None:
        """
        The NTP server at C{host}, C{port} answers with C{stratum} (the
        first datagram may start it: a long timeout).
        """
        reply = NTPPacket.fromBytes(udpQuery(NTP_REQUEST, host, port, 30.0))
        self.assertEqual((reply.leap, reply.stratum), (0, stratum))

    def test_IPv4(self) -> None:
        """
        An IPv4 datagram socket named C{ntp} is the NTP service, and the
        only one: the text service's default port is not bound.
        """
        port = freePort()
        server = self.activate([f"127.0.0.1:{port}"], ["ntp"], ["--local-stratum=5"])
        self.assertNTP("127.0.0.1", port, 5)
        log = waitFor(server.log, "the log")
        self.assertIn(f"udptime ntp service listening on 127.0.0.1:{port} (UDP)", log)
        self.assertNotIn("text service", log)
        self.assertEqual(server.stop(), 0)

    def test_IPv6(self) -> None:
        """
        An IPv6 datagram socket named C{text} is the text service.
        """
        port = freePort()
        server = self.activate([f"[::1]:{port}"], ["text"], [])
        served = float(udpQuery(b"unix", "::1", port, 30.0))
        self.assertLess(abs(served - time.time()), 60.0)
        waitFor(
            lambda: (
                f"udptime text service listening on [::1]:{port} (UDP)" in server.log()
            ),
            "the text service's line",
        )
        self.assertEqual(server.stop(), 0)

    def test_workers(self) -> None:
        """
        With C{--workers 2}, every worker serves the passed sockets: one NTP
        service on IPv4 and IPv6.
        """
        port = freePort()
        server = self.activate(
            [f"127.0.0.1:{port}", f"[::1]:{port}"],
            ["ntp", "ntp"],
            ["--local-stratum=4", "--workers=2"],
        )
        self.assertNTP("127.0.0.1", port, 4)
        self.assertNTP("::1", port, 4)
        waitFor(
            lambda: server.log().count("service listening on") == 2 + 2 * 2,
            "the supervisor's and the workers' lines",
            timeout=60.0,
        )
        log = server.log()
        for worker in (1, 2):
            self.assertIn(
                f"worker {worker}: udptime ntp-2 service listening on [::1]:{port}",
                log,
            )
        self.assertEqual(server.stop(), 0)

    def test_metrics(self) -> None:
        """
        A stream socket named C{metrics} serves the metrics and health
        pages.
        """
        port = freePort()
        metrics = freeTCPPort()
        server = self.activate(
            [f"127.0.0.1:{metrics}"], ["metrics"], [f"--port={port}"], datagram=False
        )
        # The first connection starts twistd.
        self.assertEqual(get(metrics, "/healthz", 30.0), (200, "ok\n"))
        self.assertEqual(server.stop(), 0)

    def assertActivationError(
        self, server: TwistdServer, start: Callable[[], object], line: str
    ) -> None:
        """
        C{start()} starts C{server}, which exits with status 1 after
        writing C{line} (and no traceback) on standard error.
        """
        start()
        assert server.process is not None
        server.process.wait(30)
        self.assertEqual(server.process.returncode, 1)
        self.assertEqual(server.stderr().splitlines()[-1], line)
        self.assertNotIn("Traceback", server.stderr() + server.log())

    def test_unknownName(self) -> None:
        port = freePort()
        server = self.activate([f"127.0.0.1:{port}"], ["nope"], [])
        self.assertActivationError(
            server,
            lambda: noReply(NTP_REQUEST, "127.0.0.1", port),
            "twistd udptime: socket activation: socket 'nope' (descriptor 3) names"
            " no udptime service; name it one of daytime, echo, metrics, ntp,"
            " nts-ke, text, time with FileDescriptorName=",
        )

    def test_wrongType(self) -> None:
        port = freeTCPPort()
        server = self.activate([f"127.0.0.1:{port}"], ["ntp"], [], datagram=False)

        def connect() -> None:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), 5).close()

        self.assertActivationError(
            server,
            connect,
            "twistd udptime: socket activation: socket 'ntp' (descriptor 3) is a"
            " stream socket; the ntp service needs a datagram socket"
            " (ListenDatagram=)",
        )


class TwistdNotifyTests(SynchronousTestCase):
    """
    C{twistd -n udptime} under a service manager of C{Type=notify} says
    when it is ready, and when it stops.
    """

    def test_notify(self) -> None:
        directory = tempfile.mkdtemp(prefix="udptime-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(manager.close)
        manager.bind(path)
        manager.settimeout(30)
        server = TwistdServer([f"--port={freePort()}"], env={"NOTIFY_SOCKET": path})
        self.addCleanup(server.cleanup)
        server.start()
        self.assertEqual(manager.recv(4096), b"READY=1\nSTATUS=serving")
        self.assertEqual(server.stop(), 0)
        self.assertEqual(manager.recv(4096), b"STOPPING=1")
