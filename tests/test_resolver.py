"""
L{DaemonThreadResolver}: host name lookups in daemon threads.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from udptime.resolver import DaemonThreadResolver


class DaemonThreadResolverTests(SynchronousTestCase):
    """
    L{DaemonThreadResolver} looks names up in daemon threads.
    """

    def test_resolve(self) -> None:
        """
        The lookup runs in a daemon thread, so that one that hangs cannot
        keep the command from exiting; its IPv4 and IPv6 addresses of the
        types asked for reach the receiver in the reactor's thread.
        """
        looked: list[tuple[Any, ...]] = []
        done = threading.Event()
        calls: list[Callable[[], None]] = []

        def getaddrinfo(*args: Any) -> list[Any]:
            looked.append((*args, threading.current_thread().daemon))
            done.set()
            return [
                (
                    socket.AF_INET6,
                    socket.SOCK_DGRAM,
                    17,
                    "",
                    ("2001:db8::1", 123, 0, 0),
                ),
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.1", 123)),
                (socket.AF_UNIX, socket.SOCK_DGRAM, 0, "", "/x"),
            ]

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                calls.append(lambda: f(*args))

        receiver = RecordingReceiver()
        resolver = DaemonThreadResolver(Reactor(), getaddrinfo)
        resolver.resolveHostName(
            receiver, "time.example", 123, [IPv4Address], transportSemantics="UDP"
        )
        self.assertTrue(done.wait(10))
        self.assertEqual(looked, [("time.example", 123, 0, socket.SOCK_DGRAM, True)])
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            done.wait(0.01)
        [deliver] = calls
        self.assertEqual(receiver.addresses, [])
        deliver()
        self.assertEqual(receiver.addresses, [IPv4Address("UDP", "192.0.2.1", 123)])
        self.assertTrue(receiver.complete)

    def test_everyAddressType(self) -> None:
        """
        Asked for no address types in particular (as Twisted's
        C{HostnameEndpoint} asks, for the NTS key exchange over TCP), the
        lookup gives its IPv4 and IPv6 addresses.
        """
        calls: list[Callable[[], None]] = []

        def getaddrinfo(*args: Any) -> list[Any]:
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 4460, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 4460)),
            ]

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                calls.append(lambda: f(*args))

        receiver = RecordingReceiver()
        DaemonThreadResolver(Reactor(), getaddrinfo).resolveHostName(
            receiver, "localhost", 4460
        )
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)  # the lookup's daemon thread, bounded
        [deliver] = calls
        deliver()
        self.assertEqual(
            receiver.addresses,
            [IPv6Address("TCP", "::1", 4460), IPv4Address("TCP", "127.0.0.1", 4460)],
        )

    def test_failedLookup(self) -> None:
        """
        A name that cannot be resolved gives no address.
        """
        calls: list[Callable[[], None]] = []

        def getaddrinfo(*args: Any) -> list[Any]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                calls.append(lambda: f(*args))

        receiver = RecordingReceiver()
        DaemonThreadResolver(Reactor(), getaddrinfo).resolveHostName(
            receiver, "nowhere.invalid", 0, [IPv4Address, IPv6Address]
        )
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        [deliver] = calls
        deliver()
        self.assertEqual((receiver.addresses, receiver.complete), ([], True))


class RecordingReceiver:
    """
    An C{IResolutionReceiver} that records what it is given.
    """

    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.complete = False

    def resolutionBegan(self, resolution: Any) -> None:
        self.resolution = resolution

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.complete = True
