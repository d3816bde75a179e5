"""
The text time service end to end: a real C{twistd udptime} process, asked by
plain sockets and by the C{udptime} console script over 127.0.0.1, ::1 and
IPv4-mapped addresses; many clients at once; shutdown by SIGTERM; pid files,
daemon mode and privilege dropping; and the client against a server that is
down.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    LISTENING,
    TwistdServer,
    assertCannotListen,
    freePort,
    freePrivilegedPort,
    missing,
    requirePeer,
    twistdPath,
    udpQuery,
    udptimePath,
    waitFor,
)
from udptime import __version__

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}"
ISO_UTC = ISO.encode() + rb"\+00:00\n"
RFC2822 = r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d"


def runClient(
    *arguments: str, stdin: str = "", timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """
    Run the C{udptime} console script to completion (bounded).
    """
    return subprocess.run(
        [udptimePath(), *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class RunningServerTests(SynchronousTestCase):
    """
    A C{twistd -n udptime --timezone UTC} on the default, dual-stack
    interface for each test.  Every test client comes
    from loopback, so the per-client rate limit is off (C{--rate 0}).
    """

    def setUp(self) -> None:
        self.port = freePort()
        self.server = TwistdServer(
            ["--port", str(self.port), "--timezone", "UTC", "--rate", "0"]
        )
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def exchange(
        self, payload: bytes, destination: str, source: str
    ) -> tuple[bytes, tuple[str, int]]:
        """
        Send C{payload} from a socket bound to C{source} to the server at
        C{destination}; return the reply and the address it came from.
        """
        with socket.socket(family(source), socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.settimeout(5.0)
            sock.sendto(payload, (destination, self.port))
            data, addr = sock.recvfrom(65535)
        return data, (addr[0], addr[1])

    def test_replyFromAddressAsked(self) -> None:
        """
        A reply leaves from the address the request reached, not from the
        one the kernel would pick to reach the client (127.0.0.1 for every
        loopback client): the client, which ignores datagrams from any
        other address, hears it.
        """
        _, source = self.exchange(b"unix", "127.0.0.2", "127.0.0.1")
        self.assertEqual(source, ("127.0.0.2", self.port))
        done = runClient("127.0.0.2", "-p", str(self.port), "-t", "2", "unix")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.startswith(f"127.0.0.2:{self.port}  "))

    def test_helloWorld(self) -> None:
        """
        A plain socket saying C{Hello world} gets the time, over IPv4 and
        IPv6.
        """
        for host in ("127.0.0.1", "::1"):
            with self.subTest(host=host):
                reply, addr = self.exchange(b"Hello world", host, host)
                self.assertRegex(reply, b"^" + ISO_UTC + b"$")
                self.assertEqual(addr, (host, self.port))

    def test_ipv4OnDualStack(self) -> None:
        """
        The default interface is dual-stack: an IPv4 client's request reaches
        the server as an IPv4-mapped address and the reply comes back to the
        client from the address it asked.
        """
        reply, addr = self.exchange(b"month 4", "127.0.0.1", "127.0.0.1")
        self.assertEqual((reply, addr), (b"April\n", ("127.0.0.1", self.port)))
        reply, addr = self.exchange(b"month 5", "::ffff:127.0.0.1", "::")
        self.assertEqual((reply, addr), (b"May\n", ("::ffff:127.0.0.1", self.port)))

    def test_commands(self) -> None:
        """
        Commands, zones and errors over the wire.
        """
        for request, expected in (
            (b"unix", rb"^\d+\.\d{6}\n$"),
            (b"CTIME", rb"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n$"),
            (
                b"rfc2822 Etc/GMT-3",
                rb"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0300\n$",
            ),
            (
                b"iso ../../etc/passwd",
                rb"^error: unknown time zone '../../etc/passwd'\n$",
            ),
            (b"month 13", rb"^error: month must be a number from 1 to 12, not '13'\n$"),
        ):
            with self.subTest(request=request):
                self.assertRegex(udpQuery(request, "::1", self.port), expected)

    def test_oversized(self) -> None:
        """
        A request of 513 bytes goes unanswered; one of 512 is answered.
        """
        self.assertRegex(udpQuery(b"x" * 512, "127.0.0.1", self.port), ISO_UTC)
        with self.assertRaises(TimeoutError):
            udpQuery(b"x" * 513, "127.0.0.1", self.port, timeout=0.3)

    def test_concurrentClients(self) -> None:
        """
        200 clients, half over IPv4 and half over IPv6, send their requests
        at once; each gets exactly the reply to its own request, from the
        server's address.
        """
        selector = selectors.DefaultSelector()
        expected: dict[socket.socket, bytes] = {}
        requests: dict[socket.socket, bytes] = {}
        destinations: dict[socket.socket, tuple[str, int]] = {}
        try:
            for i in range(200):
                host = "127.0.0.1" if i % 2 else "::1"
                sock = socket.socket(family(host), socket.SOCK_DGRAM)
                sock.bind((host, 0))
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
                hours = i % 12 + 1
                kind = i % 4
                if kind == 0:
                    request = f"month {hours}"
                    pattern = re.escape(MONTH_NAMES[hours - 1]) + r"\n"
                elif kind == 1:
                    request = f"iso Etc/GMT+{hours}"
                    pattern = ISO + rf"-{hours:02}:00\n"
                elif kind == 2:
                    request = f"rfc2822 Etc/GMT-{hours}"
                    pattern = RFC2822 + rf" \+{hours:02}00\n"
                else:
                    request = f"month {hours} {i}"
                    pattern = r"error: month takes one number from 1 to 12\n"
                expected[sock] = pattern.encode()
                requests[sock] = request.encode()
                destinations[sock] = (host, self.port)
            for sock, destination in destinations.items():
                sock.sendto(requests[sock], destination)
            replies: dict[socket.socket, list[tuple[bytes, object]]] = {}
            deadline = time.monotonic() + 10.0
            while len(replies) < len(expected) and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    sock = key.fileobj  # type: ignore[assignment]
                    assert isinstance(sock, socket.socket)
                    while True:
                        try:
                            data, addr = sock.recvfrom(65535)
                        except BlockingIOError:
                            break
                        replies.setdefault(sock, []).append((data, addr[:2]))
        finally:
            for sock in list(expected):
                selector.unregister(sock)
                sock.close()
            selector.close()
        self.assertEqual(len(replies), 200)
        for sock, pattern in expected.items():
            [(data, source)] = replies[sock]
            self.assertEqual(source, destinations[sock])
            self.assertRegex(data, b"^" + pattern + b"$")

    def test_cli(self) -> None:
        """
        C{udptime HOST} prints the server, its time, the delay and the
        offset, over IPv4 and IPv6.
        """
        for host, shown in (("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")):
            with self.subTest(host=host):
                done = runClient(host, "--port", str(self.port))
                self.assertEqual((done.returncode, done.stderr), (0, ""))
                self.assertRegex(
                    done.stdout,
                    rf"^{re.escape(shown)}:{self.port}  "
                    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00  "
                    r"delay \d+\.\d{3} ms  offset [+-]\d+\.\d{3} ms\n$",
                )

    def test_cliWords(self) -> None:
        """
        Request words, C{--format}, C{--count}, host names and brackets.
        """
        port = str(self.port)
        done = runClient("localhost", "-p", port, "month", "3", "--count", "2")
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = done.stdout.splitlines()
        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertRegex(line, rf"^(127\.0\.0\.1|\[::1\]):{port}  March  delay ")
        done = runClient("[::1]", "-p", port, "--format", "unix Asia/Tokyo")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertRegex(done.stdout, rf"^\[::1\]:{port}  \d+\.\d{{6}}  delay ")

    def test_cliJSON(self) -> None:
        """
        C{--json} prints one object per reply.
        """
        done = runClient("127.0.0.1", "-p", str(self.port), "--json", "unix")
        self.assertEqual(done.returncode, 0, done.stderr)
        reply = json.loads(done.stdout)
        self.assertEqual(
            (reply["protocol"], reply["server"], reply["port"]),
            ("text", "127.0.0.1", self.port),
        )
        self.assertEqual(float(reply["text"]), reply["serverTime"])
        self.assertLessEqual(abs(reply["offset"]), reply["delay"] / 2 + 1e-5)

    def test_cliServerError(self) -> None:
        """
        An error reply: one line on standard error, status 1.
        """
        done = runClient("::1", "-p", str(self.port), "iso", "Nowhere/Land")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stdout, "")
        self.assertEqual(
            done.stderr,
            f"udptime: error from [::1]:{self.port}: "
            "unknown time zone 'Nowhere/Land'\n",
        )

    def test_cliOutputGone(self) -> None:
        """
        Output to a pipe whose reader has gone ends the client quietly with
        status 1; output to a full disk with one line saying so.  Neither
        gives a traceback.
        """
        argv = [udptimePath(), "127.0.0.1", "-p", str(self.port), "-c", "3"]
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as process:
            assert process.stdout is not None
            process.stdout.close()  # before the client can print anything
            _, stderr = process.communicate(timeout=20)
        self.assertEqual((process.returncode, stderr), (1, ""))
        if not os.path.exists("/dev/full"):
            missing("/dev/full, a device every write to which fails")
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=20
            )
        self.assertEqual(
            (done.returncode, done.stderr),
            (1, "udptime: cannot write the output: No space left on device\n"),
        )

    def test_cliInteractiveStdinClosed(self) -> None:
        """
        C{--interactive} with standard input closed: one line, status 1.
        """
        done = subprocess.run(
            ["sh", "-c", 'exec "$0" 127.0.0.1 -p "$1" -i 0<&-', udptimePath(),
             str(self.port)],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr),
            (1, "", "udptime: cannot read standard input: it is closed\n"),
        )

    def test_cliInteractive(self) -> None:
        """
        C{--interactive} sends each line of its input and prints each
        reply, until C{quit}.
        """
        done = runClient(
            "127.0.0.1",
            "-p",
            str(self.port),
            "--interactive",
            stdin="month 3\nHello world\n\nmonth 12\nquit\nmonth 1\n",
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        lines = done.stdout.splitlines()
        self.assertEqual(len(lines), 3, lines)
        self.assertEqual(lines[0], "March")
        self.assertRegex(lines[1].encode() + b"\n", ISO_UTC)
        self.assertEqual(lines[2], "December")


MONTH_NAMES = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


class LifecycleTests(SynchronousTestCase):
    """
    Starting and stopping the server process.
    """

    def test_sigterm(self) -> None:
        """
        SIGTERM stops the server cleanly: exit status 0.
        """
        port = freePort()
        server = TwistdServer(["--port", str(port)])
        self.addCleanup(server.cleanup)
        server.start()
        self.assertRegex(udpQuery(b"time", "127.0.0.1", port), rb"^\d{4}-")
        self.assertEqual(server.stop(), 0)
        self.assertIn("Received SIGTERM", server.log())

    def test_badCommandLine(self) -> None:
        """
        A bad option stops twistd before anything starts: one line on
        standard error naming the option, nothing on standard output (not
        twistd's usage text), status 1.
        """
        port = freePort()
        with tempfile.TemporaryDirectory() as directory:
            for arguments, reason in [
                (
                    ["--port", "x"],
                    "--port: 'x' is not a port number from 0 to 65535",
                ),
                (
                    ["--port", str(port), "--rate", "-1"],
                    "--rate: '-1' is not a number of requests per second >= 0",
                ),
                (["--port", "0"], "every service is off: give at least one port"),
                (["now"], "unexpected argument 'now': udptime takes options only"),
            ]:
                with self.subTest(arguments=arguments):
                    done = subprocess.run(
                        [twistdPath(), "-n", "--pidfile=", "udptime", *arguments],
                        cwd=directory,
                        capture_output=True,
                        text=True,
                        timeout=30,
                    )
                    self.assertEqual(
                        (done.returncode, done.stdout, done.stderr),
                        (
                            1,
                            "",
                            f"twistd udptime: {reason} "
                            "(twistd udptime --help lists the options)\n",
                        ),
                    )
            self.assertEqual(os.listdir(directory), [])

    def test_sigint(self) -> None:
        """
        Ctrl-C (SIGINT) stops the server cleanly too, and so does a second
        signal during the shutdown: exit status 0, nothing critical logged.
        """
        port = freePort()
        server = TwistdServer(["--port", str(port)])
        self.addCleanup(server.cleanup)
        server.start()
        self.assertRegex(udpQuery(b"time", "127.0.0.1", port), rb"^\d{4}-")
        assert server.process is not None
        server.process.send_signal(signal.SIGINT)
        self.assertEqual(server.stop(), 0)
        log = server.log()
        self.assertIn("Received SIGINT", log)
        self.assertNotIn("critical", log)
        self.assertNotIn("Traceback", log)

    def test_sighup(self) -> None:
        """
        SIGHUP (a closed terminal, or kill -HUP) stops the server cleanly
        too, instead of killing it on the spot: status 0, logged.
        """
        port = freePort()
        server = TwistdServer(["--port", str(port)])
        self.addCleanup(server.cleanup)
        server.start()
        self.assertEqual(server.stop(number=signal.SIGHUP), 0)
        self.assertIn("Received SIGHUP", server.log())
        self.assertIn("Server Shut Down.", server.log())

    def test_portInUse(self) -> None:
        """
        A port that cannot be bound stops twistd with status 1, after one
        line on standard error naming the service and the address.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            server = TwistdServer(
                ["--port", "0", "--ntp-port", str(port), "--interface", "127.0.0.1"]
            )
            assertCannotListen(self, server, "ntp", f"127.0.0.1:{port}")

    def test_pidfile(self) -> None:
        """
        C{--pidfile} writes the server's pid, and the file goes at exit.
        """
        directory = tempfile.mkdtemp(prefix="udptime-pid-")
        self.addCleanup(os.rmdir, directory)
        pidfile = os.path.join(directory, "udptime.pid")
        port = freePort()
        server = TwistdServer(
            ["--port", str(port)], twistdArguments=[f"--pidfile={pidfile}"]
        )
        self.addCleanup(server.cleanup)
        server.start()
        with open(pidfile) as f:
            self.assertEqual(int(f.read().strip()), server.pid)
        self.assertEqual(server.stop(), 0)
        self.assertFalse(os.path.exists(pidfile))

    def test_daemon(self) -> None:
        """
        Without C{-n} twistd runs the server as a daemon, which writes its
        pid file, logs to its log file, answers, and stops on SIGTERM.
        """
        directory = tempfile.mkdtemp(prefix="udptime-daemon-")
        self.addCleanup(shutil.rmtree, directory, True)
        pidfile = os.path.join(directory, "twistd.pid")
        logfile = os.path.join(directory, "twistd.log")
        port = freePort()
        done = subprocess.run(
            [
                *(twistdPath(), f"--pidfile={pidfile}", f"--logfile={logfile}"),
                *("udptime", "--port", str(port)),
            ],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        pid = waitFor(lambda: _readPid(pidfile), "the pid file")
        self.addCleanup(_stopDaemon, pid, pidfile)
        waitFor(lambda: LISTENING in _read(logfile), "the server to listen")
        self.assertRegex(udpQuery(b"month 6", "::1", port), b"^June\n$")
        os.kill(pid, signal.SIGTERM)
        waitFor(lambda: not os.path.exists(pidfile), "the pid file to go")

    def test_daemonPortInUse(self) -> None:
        """
        As a daemon too, a port that cannot be bound is one line on
        standard error, and status 1: the sockets are bound before twistd
        leaves the terminal.  No pid file is left, and no process.
        """
        directory = tempfile.mkdtemp(prefix="udptime-daemon-")
        self.addCleanup(shutil.rmtree, directory, True)
        pidfile = os.path.join(directory, "twistd.pid")
        logfile = os.path.join(directory, "twistd.log")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            done = subprocess.run(
                [
                    *(twistdPath(), f"--pidfile={pidfile}", f"--logfile={logfile}"),
                    *("udptime", "--port", str(port), "--interface", "127.0.0.1"),
                ],
                cwd=directory,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=20,
            )
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr),
            (
                1,
                "",
                f"twistd udptime: text service cannot listen on 127.0.0.1:{port}"
                " (UDP): Address already in use\n",
            ),
        )
        self.assertFalse(os.path.exists(pidfile))

    def test_version(self) -> None:
        """
        C{twistd udptime --version} prints udptime's version (twistd's own
        C{--version}, before C{udptime}, prints Twisted's).
        """
        done = subprocess.run(
            [twistdPath(), "udptime", "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr),
            (0, f"udptime {__version__}\n", ""),
        )

    def test_dropPrivileges(self) -> None:
        """
        With C{--uid}/C{--gid} the server binds a port below 1024 first,
        then runs as the user given.
        """
        if os.getuid() != 0:
            missing("dropping privileges needs root")
        nobody = pwd.getpwnam("nobody")
        port = freePrivilegedPort()
        server = TwistdServer(
            ["--port", str(port), "--interface", "127.0.0.1"],
            twistdArguments=[f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}"],
        )
        os.chmod(server.directory, 0o777)
        self.addCleanup(server.cleanup)
        server.start()
        self.assertEqual(udpQuery(b"month 9", "127.0.0.1", port), b"September\n")
        with open(f"/proc/{server.pid}/status") as f:
            status = f.read()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)", status, re.MULTILINE)
        assert uids is not None
        self.assertEqual({int(u) for u in uids.groups()}, {nobody.pw_uid})
        self.assertEqual(server.stop(), 0)


DUAL_STACK_SCRIPT = """
import socket, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv6/bindv6only", "w") as setting:
    setting.write("1")
from udptime.service import bindUDPSocket
server = bindUDPSocket("::", 0)
server.settimeout(5)
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.sendto(b"over IPv4", ("127.0.0.1", server.getsockname()[1]))
data, source = server.recvfrom(100)
print(data.decode(), source[0])
"""


class DualStackTests(SynchronousTestCase):
    """
    The default interface is one dual-stack socket whatever the host says.
    """

    def test_bindv6only(self) -> None:
        """
        In a private network namespace whose C{net.ipv6.bindv6only} is 1
        (new IPv6 sockets IPv6 only), the server's C{::} socket still
        receives IPv4 datagrams, from IPv4-mapped addresses.
        """
        if os.geteuid() != 0:
            missing("a network namespace and its sysctl need root")
        unshare = requirePeer("unshare", "util-linux, for a private network namespace")
        requirePeer("ip", "iproute2, to bring the namespace's loopback up")
        done = subprocess.run(
            [unshare, "-n", sys.executable, "-c", DUAL_STACK_SCRIPT],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(
            (done.returncode, done.stdout),
            (0, "over IPv4 ::ffff:127.0.0.1\n"),
            done.stderr,
        )


class DownServerTests(SynchronousTestCase):
    """
    The client against a server that does not answer.
    """

    def test_noServer(self) -> None:
        """
        Nothing listening: one line on standard error and status 1, after
        every try (the client's timing is checked on a fake reactor, in
        L{tests.test_client}).
        """
        for host, shown in (("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")):
            with self.subTest(host=host):
                port = freePort()
                done = runClient(
                    host, "-p", str(port), "-t", "0.3", "-r", "2", timeout=0.6 + 15
                )
                self.assertEqual(done.returncode, 1)
                self.assertEqual(done.stdout, "")
                self.assertEqual(
                    done.stderr,
                    f"udptime: no reply from {shown}:{port} after 2 tries\n",
                )

    def test_silentServer(self) -> None:
        """
        A server that swallows requests: the same message.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            done = runClient(
                "127.0.0.1", "-p", str(port), "-t", "0.2", "-r", "3", timeout=0.6 + 15
            )
        self.assertEqual(done.returncode, 1)
        self.assertEqual(
            done.stderr, f"udptime: no reply from 127.0.0.1:{port} after 3 tries\n"
        )

    def test_silentServerJSON(self) -> None:
        """
        With C{--json}, the failure is a JSON object on standard output, and
        the status is still 1.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            done = runClient(
                *("127.0.0.1", "-p", str(port), "-t", "0.2", "-r", "1", "--json"),
                timeout=0.2 + 15,
            )
        self.assertEqual((done.returncode, done.stderr), (1, ""))
        self.assertEqual(
            json.loads(done.stdout),
            {
                "error": "timeout",
                "message": f"no reply from 127.0.0.1:{port} after 1 try",
                "protocol": "text",
                "server": "127.0.0.1",
                "port": port,
            },
        )


class RateLimitedServerTests(SynchronousTestCase):
    """
    The client against a server whose rate limit it runs into.
    """

    def test_countPastTheBurst(self) -> None:
        """
        C{--count} past a server's burst: the queries it answered are
        printed, and the first it does not answer says that the server
        answered before and may be limiting the rate.
        """
        port = freePort()
        server = TwistdServer(
            [
                *("--port", str(port), "--interface", "127.0.0.1"),
                *("--rate", "0.01", "--burst", "2"),
            ]
        )
        self.addCleanup(server.cleanup)
        server.start()
        done = runClient(
            *("127.0.0.1", "-p", str(port), "-c", "3", "--interval", "0"),
            *("-t", "0.3", "-r", "1", "unix"),
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(len(done.stdout.splitlines()), 2, done.stdout)
        self.assertEqual(
            done.stderr,
            f"udptime: no reply from 127.0.0.1:{port} after 1 try; the server"
            " answered 2 earlier queries of this run, so it may be limiting the"
            " rate of requests it answers (a longer --interval asks less often)\n",
        )

    def test_badCommandLine(self) -> None:
        """
        A bad command line: exactly one line on standard error, status 2.
        """
        for arguments, message in (
            ((), "the following arguments are required: host"),
            (
                ("127.0.0.1", "--timeout", "0"),
                "argument -t/--timeout: must be a positive number: '0'",
            ),
            (("127.0.0.1", "--nope"), "unrecognized arguments: --nope"),
        ):
            with self.subTest(arguments=arguments):
                done = runClient(*arguments)
                self.assertEqual(done.returncode, 2)
                self.assertEqual(done.stdout, "")
                self.assertEqual(done.stderr, f"udptime: error: {message}\n")


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _readPid(path: str) -> int | None:
    text = _read(path).strip()
    return int(text) if text.isdigit() else None


def _stopDaemon(pid: int, pidfile: str) -> None:
    """
    Stop the daemon C{pid} if it still runs: SIGTERM, then SIGKILL if its
    pid file is still there 10 seconds later.
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # already gone, as the test wanted
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(pidfile):
        time.sleep(0.02)  # polling, bounded by the deadline
    if os.path.exists(pidfile):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
