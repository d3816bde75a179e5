"""
Tests for C{--workers}: worker processes sharing the ports through
C{SO_REUSEPORT}, supervised by the twistd process.
"""

from __future__ import annotations

import io
import os
import pwd
import re
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from datetime import UTC
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher, jsonFileLogObserver
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    RecordingTransport,
    TwistdServer,
    assertCannotListen,
    deliver,
    freePort,
    freePrivilegedPort,
    missing,
    udpQuery,
    waitFor,
)
from udptime import clock, text, workers
from udptime.decision import Decision
from udptime.server import TextTimeServer
from udptime.service import UDPListenService
from udptime.tap import Options, makeService

STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def workerPids(server: TwistdServer) -> dict[int, int]:
    """
    The current process id of each worker, from the supervisor's log.
    """
    pids: dict[int, int] = {}
    for index, pid in STARTED.findall(server.log()):
        pids[int(index)] = int(pid)
    return pids


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def queryFromManyPorts(port: int, count: int) -> list[bytes]:
    """
    C{count} text queries, each from its own source address and port (the
    workers' sockets are chosen by source address).
    """
    return [
        udpQuery(
            b"unix",
            "127.0.0.1",
            port,
            timeout=5.0,
            source=(f"127.0.{10 + n // 200}.{1 + n % 200}", 0),
        )
        for n in range(count)
    ]


def answeringWorkers(server: TwistdServer, address: str) -> set[str]:
    """
    The workers that logged (with C{--verbose}) a request from C{address}.
    """
    pattern = re.compile(
        r"worker (\d+): text: \d+-byte request from \('(?:::ffff:)?"
        + re.escape(address)
        + "'"
    )
    return set(pattern.findall(server.log()))


class WorkerTests(SynchronousTestCase):
    """
    A real twistd with worker processes.
    """

    def startServer(self, count: int, *extra: str, **kwargs: object) -> TwistdServer:
        self.port = freePort()
        server = TwistdServer(
            ["--port", str(self.port), "--workers", str(count), *extra], **kwargs
        )
        self.addCleanup(server.cleanup)
        server.start()
        waitFor(lambda: len(workerPids(server)) == count, "the workers to start")
        waitFor(
            lambda: server.log().count("service listening on") >= 1 + count,
            "the workers to listen",
        )
        return server

    def test_bothWorkersAnswer(self) -> None:
        """
        Both workers answer requests, each on its own socket of the same
        port.
        """
        server = self.startServer(2, "--verbose")
        replies = queryFromManyPorts(self.port, 48)
        self.assertEqual(len(replies), 48)
        for index in (1, 2):
            waitFor(
                lambda index=index: (
                    f"worker {index}: text: 4-byte request" in server.log()
                ),
                f"worker {index} to answer",
            )
        self.assertEqual(server.stop(), 0)

    def test_oneWorkerPerClient(self) -> None:
        """
        Every datagram of one client reaches the same worker, whatever its
        source port, so one client meets one rate limit: a flood from one
        address through two workers gets no more replies than the burst
        and rate of one.
        """
        server = self.startServer(2, "--verbose", "--burst", "8", "--rate", "1")
        for client in ("127.0.3.1", "127.0.3.2", "127.0.3.3", "127.0.3.4"):
            sockets = []
            for _ in range(40):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.addCleanup(sock.close)
                sock.bind((client, 0))  # a new source port each time
                sockets.append(sock)
            started = time.monotonic()
            for sock in sockets:
                sock.sendto(b"unix", ("127.0.0.1", self.port))
            replies = 0
            deadline = time.monotonic() + 1.0
            waiting = list(sockets)
            while waiting and time.monotonic() < deadline:
                ready, _, _ = select.select(waiting, [], [], 0.1)
                for sock in ready:
                    sock.recvfrom(100)
                    replies += 1
                    waiting.remove(sock)
            elapsed = time.monotonic() - started
            self.assertGreaterEqual(replies, 8, client)
            self.assertLessEqual(replies, 8 + 1 * elapsed + 1, client)
            self.assertEqual(len(answeringWorkers(server, client)), 1, client)
        self.assertEqual(server.stop(), 0)

    def test_workingDirectoryNotImported(self) -> None:
        """
        Workers import the modules their supervisor imported, not those of
        the directory twistd runs in (which may be a shared one, and
        twistd root).
        """
        port = freePort()
        server = TwistdServer(["--port", str(port), "--workers", "1"])
        self.addCleanup(server.cleanup)
        planted = os.path.join(server.directory, "udptime")
        os.mkdir(planted)
        with open(os.path.join(planted, "__init__.py"), "w") as module:
            module.write("raise SystemExit('planted udptime imported')\n")
        server.start()
        waitFor(
            lambda: server.log().count("service listening on") >= 2,
            "the worker to listen",
        )
        self.assertEqual(len(queryFromManyPorts(port, 4)), 4)
        self.assertEqual(server.stop(), 0)
        self.assertNotIn("planted", server.log() + server.stderr())

    def test_portInUse(self) -> None:
        """
        A second supervisor on a port whose workers already serve it fails
        to start, naming the service and the address, as a server without
        workers does: sockets with SO_REUSEPORT would otherwise have shared
        the port in silence.
        """
        first = self.startServer(1)
        second = TwistdServer(["--port", str(self.port), "--workers", "2"])
        assertCannotListen(self, second, "text", f"[::]:{self.port}")
        self.assertEqual(len(queryFromManyPorts(self.port, 4)), 4)
        self.assertIn(f"listening on [::]:{self.port} (UDP), 1 worker\n", first.log())
        self.assertEqual(first.stop(), 0)

    def test_killedWorkerComesBack(self) -> None:
        """
        A worker that dies is started again, and the service goes on.
        """
        server = self.startServer(2)
        before = workerPids(server)
        os.kill(before[1], signal.SIGKILL)
        waitFor(
            lambda: workerPids(server).get(1) not in (None, before[1]),
            "worker 1 to be started again",
        )
        after = workerPids(server)
        self.assertEqual(after[2], before[2])
        self.assertTrue(alive(after[1]))
        self.assertFalse(alive(before[1]))
        self.assertIn(f"worker 1 (pid {before[1]}) ended", server.log())
        self.assertEqual(len(queryFromManyPorts(self.port, 16)), 16)
        self.assertEqual(server.stop(), 0)

    def test_sigtermStopsAll(self) -> None:
        """
        SIGTERM to the supervisor stops every worker, and it exits 0.
        """
        server = self.startServer(2)
        pids = workerPids(server).values()
        self.assertEqual(server.stop(), 0)
        for pid in pids:
            self.assertFalse(alive(pid))
        self.assertIn("worker 1: Received SIGTERM", server.log())
        self.assertIn("worker 2: Received SIGTERM", server.log())

    def test_ctrlC(self) -> None:
        """
        Ctrl-C at a terminal signals the supervisor and its workers alike;
        then the supervisor stops the workers with SIGTERM, which they take
        in their stride: all exit, status 0, nothing critical logged.
        """
        server = self.startServer(2, newSession=True)
        pids = workerPids(server).values()
        self.assertEqual(server.stop(number=signal.SIGINT, wholeGroup=True), 0)
        for pid in pids:
            self.assertFalse(alive(pid))
        log = server.log()
        self.assertIn("worker 1: Received SIGINT", log)
        self.assertNotIn("critical", log)
        self.assertNotIn("Traceback", log)

    def test_noOrphans(self) -> None:
        """
        Workers whose supervisor is killed outright exit too.
        """
        server = self.startServer(2)
        pids = list(workerPids(server).values())
        assert server.process is not None
        server.process.kill()
        server.process.wait()
        waitFor(lambda: not any(alive(pid) for pid in pids), "the workers to exit")

    def test_dropPrivileges(self) -> None:
        """
        With --uid/--gid the supervisor binds a privileged port first; the
        workers run as the unprivileged user and serve it.
        """
        nobody = rootAndNobody(self, "needs root to bind a port below 1024")
        port = freePrivilegedPort()
        server = TwistdServer(
            ["--port", str(port), "--workers", "2"],
            twistdArguments=[f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}"],
        )
        os.chmod(server.directory, 0o755)
        self.addCleanup(server.cleanup)
        # Whether nobody may run this interpreter depends on where it is
        # installed: twistd refuses to start exactly when it may not (a
        # worker that ended could not be started again).
        blocked = workers.cannotRunAs(
            workers.Privileges(nobody.pw_uid, nobody.pw_gid, False),
            [sys.executable, "-c", "import udptime.tap"],
            {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        if blocked is not None:
            self.assertRaises(RuntimeError, server.start)
            assert server.process is not None
            self.assertEqual(server.process.returncode, 1)
            [line] = server.stderr().splitlines()
            self.assertTrue(
                line.startswith(
                    f"twistd udptime: user {nobody.pw_uid} cannot run {sys.executable}"
                ),
                line,
            )
            self.assertIn("could not be started again", line)
            self.assertNotIn("Traceback", server.log() + server.stderr())
            self.assertEqual(workerPids(server), {})
            return
        server.start()
        waitFor(lambda: len(workerPids(server)) == 2, "the workers to start")
        self.assertEqual(len(queryFromManyPorts(port, 8)), 8)
        for pid in workerPids(server).values():
            self.assertEqual(processUser(pid), nobody.pw_uid)
        self.assertNotIn("cannot run", server.log())
        self.assertEqual(server.stop(), 0)


class CannotRunAsTests(SynchronousTestCase):
    """
    L{workers.cannotRunAs} runs a command as another user, to tell whether
    that user could start a worker.
    """

    def setUp(self) -> None:
        nobody = rootAndNobody(self, "needs root to switch users")
        self.privileges = workers.Privileges(nobody.pw_uid, nobody.pw_gid, False)
        self.uid = nobody.pw_uid

    def test_runs(self) -> None:
        """
        A command the user can run, run as that user: L{None}.
        """
        check = (
            f'test "$(id -u)" = {self.uid} && test "$(id -g)" = {self.privileges.gid}'
        )
        self.assertIsNone(
            workers.cannotRunAs(self.privileges, ["/bin/sh", "-c", check], {})
        )

    def test_fails(self) -> None:
        """
        A command that fails: the last line of its error output, or its exit
        status when it wrote none.
        """
        command = ["/bin/sh", "-c", "echo first >&2; echo 'no module' >&2; exit 3"]
        self.assertEqual(workers.cannotRunAs(self.privileges, command, {}), "no module")
        self.assertEqual(
            workers.cannotRunAs(self.privileges, ["/bin/sh", "-c", "exit 3"], {}),
            "exit status 3",
        )

    def test_unreachable(self) -> None:
        """
        An interpreter in a directory only root may enter (a virtualenv under
        C{/root}, say) cannot be run by the user: the reason says why.
        """
        directory = tempfile.mkdtemp()  # mode 0700, owned by root
        self.addCleanup(shutil.rmtree, directory)
        executable = os.path.join(directory, "python")
        os.symlink("/bin/true", executable)
        reason = workers.cannotRunAs(self.privileges, [executable], {})
        assert reason is not None
        self.assertIn("Permission denied", reason)
        self.assertIsNone(
            workers.cannotRunAs(workers.Privileges(0, 0, False), [executable], {})
        )


def rootAndNobody(case: SynchronousTestCase, why: str) -> pwd.struct_passwd:
    """
    The user C{nobody}, for a test that switches to it; skips C{case}
    (saying C{why}) unless run as root, or when there is no such user.
    """
    if os.geteuid() != 0:
        missing(why)
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        missing("no user 'nobody'")
        raise


def processUser(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Uid line for {pid}")


class OptionTests(SynchronousTestCase):
    """
    The C{--workers} option.
    """

    def test_count(self) -> None:
        options = Options()
        options.parseOptions(["--workers", "3"])
        self.assertEqual(options["workers"], 3)

    def test_auto(self) -> None:
        """
        C{auto} is one worker per CPU this process may use.
        """
        options = Options()
        options.parseOptions(["--workers", "auto"])
        self.assertEqual(options["workers"], len(os.sched_getaffinity(0)))

    def test_autoBounded(self) -> None:
        """
        C{auto} starts no more than L{workers.MAX_WORKERS}, however many
        CPUs there are.
        """
        self.patch(os, "sched_getaffinity", lambda pid: set(range(1000)))
        self.assertEqual(workers.workerCount("auto"), workers.MAX_WORKERS)

    def test_default(self) -> None:
        """
        By default the server runs in one process, without workers.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["workers"], 0)

    def test_invalid(self) -> None:
        for value in ("-1", "many", "1.5", "", "257", "100000"):
            with self.subTest(value=value):
                error = self.assertRaises(
                    usage.UsageError, Options().parseOptions, ["--workers", value]
                )
                self.assertEqual(
                    str(error),
                    f"--workers: {value!r} is not a number from 0 to 256, or auto",
                )

    def test_argumentsKept(self) -> None:
        """
        The options given are kept, for the workers' command line.
        """
        options = Options()
        options.parseOptions(["--port", "5001", "--workers", "2"])
        self.assertEqual(options.arguments, ["--port", "5001", "--workers", "2"])

    def test_workerSetting(self) -> None:
        """
        The setting handed to a worker survives its trip through its command
        line (C{--worker}), with privileges to drop or without.
        """
        for privileges in [
            None,
            workers.Privileges(65534, 65534, False),
            workers.Privileges(None, 100, True),
        ]:
            setting = workers.WorkerSetting(2, 1234, {"text": 3, "ntp": 4}, privileges)
            options = Options()
            options.parseOptions(["--worker", setting.toOption()])
            self.assertEqual(options["worker"], setting)

    def test_badWorkerSetting(self) -> None:
        """
        A C{--worker} value that is not a worker setting is a usage error.
        """
        for value in ("", "1", "1:2", "x:2:text=3", "1:2:text=x", "1:2:text=3:4"):
            with self.subTest(value=value):
                error = self.assertRaises(
                    usage.UsageError, Options().parseOptions, ["--worker", value]
                )
                self.assertIn("--worker", str(error))

    def test_workerOptionHidden(self) -> None:
        """
        C{--help} does not list C{--worker}, which is for the supervisor's
        use; it lists C{--workers}.
        """
        text = Options().getUsage()
        self.assertIn("--workers=", text)
        self.assertNotIn("--worker=", text)


class RoleTests(SynchronousTestCase):
    """
    L{makeService} decides the process's role before it builds anything.
    """

    def setUp(self) -> None:
        self.measured: list[object] = []

        def measurePrecision(*args: object, **kwargs: object) -> int:
            self.measured.append(args)
            return -20

        self.patch(clock, "measurePrecision", measurePrecision)
        text._zoneNamesByFold.cache_clear()

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(list(arguments))
        return options

    def test_supervisor(self) -> None:
        """
        A supervisor builds only its L{workers.WorkerSupervisor}, with the
        services' ports: no protocols, no clock measurement, no zones.
        """
        top = makeService(
            self.parse("--workers", "2", "--ntp-port", "1123", "--time-port", "1037")
        )
        [supervisor] = list(top)  # type: ignore[call-overload]
        self.assertIsInstance(supervisor, workers.WorkerSupervisor)
        self.assertEqual(supervisor.ports, {"text": 5000, "ntp": 1123, "time": 1037})
        self.assertEqual(supervisor.count, 2)
        self.assertEqual(self.measured, [])
        self.assertEqual(text._zoneNamesByFold.cache_info().currsize, 0)

    def test_singleProcess(self) -> None:
        """
        A single process builds every protocol (the NTP service measures
        the clock, the text service reads the zone names).
        """
        top = makeService(self.parse("--ntp-port", "1123"))
        names = {
            child.name
            for child in top  # type: ignore[attr-defined]
            if isinstance(child, UDPListenService)
        }
        self.assertEqual(names, {"text", "ntp"})
        self.assertEqual(len(self.measured), 1)
        self.assertEqual(text._zoneNamesByFold.cache_info().currsize, 1)

    def test_worker(self) -> None:
        """
        A worker (C{--worker}, even with its supervisor's C{--workers})
        builds the protocols and serves the sockets it inherited.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        setting = workers.WorkerSetting(1, os.getppid(), {"text": sock.fileno()})
        self.patch(workers, "dieWithParent", lambda supervisor: None)
        top = makeService(self.parse("--workers", "2", "--worker", setting.toOption()))
        listener = top.getServiceNamed("text")  # type: ignore[attr-defined]
        self.assertIsInstance(listener.protocol, TextTimeServer)
        self.assertEqual(listener.boundSocket.fileno(), sock.fileno())
        listener.boundSocket.detach()


class FailingServer(TextTimeServer):
    """
    A text service with a bug.
    """

    def respond(self, data: bytes, addr: Any, received: float) -> Decision:
        raise RuntimeError("a bug")


class RelayTests(SynchronousTestCase):
    """
    L{workers.WorkerProcess.relay} puts a worker's log lines in the
    supervisor's log.
    """

    def test_failureSaysWhat(self) -> None:
        """
        A failure logged in a worker still says what went wrong once its
        event has gone through JSON (which keeps the traceback's frames,
        not the exception) and the supervisor's log.
        """
        output = io.StringIO()
        server = FailingServer(defaultZone=UTC)
        server.log = Logger(observer=jsonFileLogObserver(output))
        server.makeConnection(RecordingTransport())
        deliver(server, b"time", ("192.0.2.1", 4000), 1_800_000_000.0)
        self.assertEqual(server.counters.internalErrors, 1)
        relayed: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(relayed.append)
        self.addCleanup(globalLogPublisher.removeObserver, relayed.append)
        supervisor: Any = SimpleNamespace(reactor=Clock(), watcher=None)
        worker = workers.WorkerProcess(supervisor, 2)
        for line in output.getvalue().splitlines():
            worker.relay(line.encode("utf-8"))
        [event] = relayed
        self.assertEqual(
            formatEvent(event),
            "worker 2: text failed on a 4-byte datagram from ('192.0.2.1', 4000):"
            " RuntimeError('a bug') (0 similar lines left out)",
        )
        self.flushLoggedErrors()
