"""
Tests for L{tests.support}: real servers started on free ports even when
another process takes a port between the pick and the bind.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

from tests import support
from tests.support import ADDRESS_IN_USE, startOnFreePorts, udpQuery


class StartOnFreePortsTests(SynchronousTestCase):
    """
    L{startOnFreePorts} starts twistd again, on other ports, when a port
    found free was taken before twistd bound it.
    """

    def setUp(self) -> None:
        # A port taken on every address, as another process would take it
        # right after it was found free.
        self.taken = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(self.taken.close)
        self.taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.taken.bind(("::", 0))
        takenPort: int = self.taken.getsockname()[1]
        realFreePort = support.freePort

        def picks() -> Iterator[int]:
            yield takenPort
            while True:
                yield realFreePort()

        each = picks()
        self.patch(support, "freePort", lambda: next(each))
        self.takenPort = takenPort

    def arguments(self, ports: list[int]) -> list[str]:
        return ["--port", "0", "--time-port", str(ports[0])]

    def test_portTakenBeforeBind(self) -> None:
        """
        The first pick is taken when twistd binds it: the server is started
        on another port, and answers there.
        """
        server, [port] = startOnFreePorts(1, self.arguments)
        self.addCleanup(server.cleanup)
        self.assertNotEqual(port, self.takenPort)
        self.assertEqual(len(udpQuery(b"", "127.0.0.1", port, timeout=30.0)), 4)

    def test_oneTry(self) -> None:
        """
        With one try, the taken port is an error that says so.
        """
        with self.assertRaises(RuntimeError) as raised:
            startOnFreePorts(1, self.arguments, tries=1)
        self.assertIn(ADDRESS_IN_USE, str(raised.exception))
