"""
Tests for the steering of clients over the workers' sockets: the program
the kernel runs on each datagram of a C{SO_REUSEPORT} group
(L{udptime.workers.steeringProgram}), and the supervisor's decision to
steer a dead worker's clients to the others until its new process listens.
Real sockets on 127.0.0.1, clients on their own loopback addresses.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

from twisted.internet import task
from twisted.internet.error import ProcessTerminated
from twisted.logger import LogLevel, eventAsJSON
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from udptime import workers
from udptime.service import LISTENING, bindUDPSocket

CLIENTS = [f"127.6.{n // 200}.{1 + n % 200}" for n in range(48)]


def arrivals(
    sockets: list[socket.socket], port: int, clients: list[str]
) -> dict[str, int]:
    """
    Send one datagram from each of C{clients} to C{port} of 127.0.0.1 and
    tell which of C{sockets} (its index) each arrived on, polling with a
    bounded deadline.
    """
    for address in clients:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind((address, 0))
            sender.sendto(address.encode("ascii"), ("127.0.0.1", port))
    found: dict[str, int] = {}
    deadline = time.monotonic() + 15.0
    while len(found) < len(clients) and time.monotonic() < deadline:
        readable, _, _ = select.select(sockets, [], [], 0.2)
        for sock in readable:
            data = sock.recv(512)
            found[data.decode("ascii")] = sockets.index(sock)
    return found


def group(case: SynchronousTestCase, count: int) -> tuple[list[socket.socket], int]:
    """
    C{count} sockets of one C{SO_REUSEPORT} group on 127.0.0.1, bound in
    order, closed when C{case} ends.
    """
    first = bindUDPSocket("127.0.0.1", 0, True)
    port = first.getsockname()[1]
    sockets = [first] + [
        bindUDPSocket("127.0.0.1", port, True) for _ in range(count - 1)
    ]
    for sock in sockets:
        sock.setblocking(False)
        case.addCleanup(sock.close)
    return sockets, port


class SteeringProgramTests(SynchronousTestCase):
    """
    L{workers.steerBySource} with and without the sockets that serve.
    """

    def test_deadSocketAvoided(self) -> None:
        """
        Steered to the sockets that serve, no datagram reaches the one that
        does not; the clients of the others keep their socket, and those of
        the idle one are spread over the others.  Steered to all again,
        every client gets its first socket back.
        """
        sockets, port = group(self, 3)
        workers.steerBySource(sockets[0], 3, 64)
        first = arrivals(sockets, port, CLIENTS)
        self.assertEqual(len(first), len(CLIENTS))
        self.assertEqual(set(first.values()), {0, 1, 2})

        workers.steerBySource(sockets[0], 3, 64, serving=[0, 2])
        avoided = arrivals(sockets, port, CLIENTS)
        self.assertEqual(len(avoided), len(CLIENTS))
        self.assertNotIn(1, avoided.values())
        for client, index in first.items():
            if index != 1:
                self.assertEqual(avoided[client], index)
        moved = {avoided[c] for c, index in first.items() if index == 1}
        self.assertEqual(moved, {0, 2})

        workers.steerBySource(sockets[0], 3, 64, serving=None)
        self.assertEqual(arrivals(sockets, port, CLIENTS), first)

    def test_noneServing(self) -> None:
        """
        When no socket serves, the program is the one for all of them.
        """
        self.assertEqual(
            workers.steeringProgram(4, 64, serving=[]),
            workers.steeringProgram(4, 64),
        )
        self.assertEqual(
            workers.steeringProgram(4, 64, serving=[0, 1, 2, 3]),
            workers.steeringProgram(4, 64),
        )


class RecordingReactor(task.Clock):
    """
    A clock that records the processes it is asked to spawn, and starts
    none.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Any] = []

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> None:
        self.spawned.append(protocol)


class SupervisorSteeringTests(SynchronousTestCase):
    """
    What L{workers.WorkerSupervisor} decides when a worker dies and when its
    new process listens, seen on its real sockets.
    """

    def setUp(self) -> None:
        self.reactor = RecordingReactor()
        self.supervisor = workers.WorkerSupervisor(
            self.reactor, {"text": 0}, "127.0.0.1", 2, []
        )
        self.addCleanup(self.supervisor.unbind)
        self.supervisor.privilegedStartService()
        self.sockets = [self.supervisor.sockets[i]["text"] for i in (1, 2)]
        for sock in self.sockets:
            sock.setblocking(False)
        self.port = self.sockets[0].getsockname()[1]

    def listening(self, worker: workers.WorkerProcess) -> None:
        """
        Relay the worker's log line that says it listens on its socket.
        """
        event = {
            "log_format": LISTENING,
            "log_level": LogLevel.info,
            "log_namespace": "udptime.service",
            "log_time": 0.0,
            "service": "text",
            "where": "127.0.0.1:0",
        }
        worker.relay(("\x1e" + eventAsJSON(event)).encode("utf-8"))

    def test_deadWorkersClientsServedByOthers(self) -> None:
        """
        When worker 1 ends, every client's datagrams go to worker 2's
        socket, from then until worker 1's new process says it listens;
        then worker 1 gets its clients back.
        """
        before = arrivals(self.sockets, self.port, CLIENTS)
        self.assertEqual(set(before.values()), {0, 1})
        dead = self.supervisor.workers[1]
        self.supervisor.workerEnded(dead, Failure(ProcessTerminated(signal=9)))
        self.assertEqual(self.supervisor.serving, {2})
        self.assertEqual(set(arrivals(self.sockets, self.port, CLIENTS).values()), {1})

        self.reactor.advance(workers.RESTART_DELAY)
        restarted = self.supervisor.workers[1]
        self.assertIsNot(restarted, dead)
        self.assertEqual(set(arrivals(self.sockets, self.port, CLIENTS).values()), {1})

        self.listening(restarted)
        self.assertEqual(self.supervisor.serving, {1, 2})
        self.assertEqual(arrivals(self.sockets, self.port, CLIENTS), before)

    def test_workerNeverBack(self) -> None:
        """
        A worker that cannot be started again (it ends at once, each time)
        leaves its clients with the other worker for good.
        """
        for _ in range(4):
            worker = self.supervisor.workers[1]
            self.supervisor.workerEnded(worker, Failure(ProcessTerminated(1)))
            self.reactor.advance(workers.MAX_RESTART_DELAY)
        self.assertEqual(self.supervisor.serving, {2})
        self.assertEqual(set(arrivals(self.sockets, self.port, CLIENTS).values()), {1})

    def test_bothDead(self) -> None:
        """
        With every worker dead, the clients are steered as usual, to the
        sockets whose workers will come back.
        """
        before = arrivals(self.sockets, self.port, CLIENTS)
        for index in (1, 2):
            worker = self.supervisor.workers[index]
            self.supervisor.workerEnded(worker, Failure(ProcessTerminated(1)))
        self.assertEqual(self.supervisor.serving, set())
        self.assertEqual(arrivals(self.sockets, self.port, CLIENTS), before)
