"""
Tests that L{udptime.client.query} takes a reply's receive time from the
kernel (C{SIOCGSTAMPNS}) where the system gives it, on a real socket.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from udptime.client import query
from udptime.server import TextTimeServer
from udptime.text import TextClientCodec


class KernelReceiveTimeTests(TestCase):
    """
    The client's receive time is the kernel's.
    """

    @inlineCallbacks
    def test_kernelReceiveTime(self) -> Any:
        """
        With a wall clock stuck at Unix time 1000, the delay (receive time
        minus send time) shows that the receive time came from the kernel,
        and is the real time of the reply's arrival.
        """
        if sys.platform != "linux":
            raise self.skipTest("kernel receive times are read on Linux only")
        port = reactor.listenUDP(0, TextTimeServer(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        before = time.time()
        result = yield query(
            reactor,  # type: ignore[arg-type]
            "127.0.0.1",
            TextClientCodec("unix"),
            port=port.getHost().port,
            timeout=5.0,
            clock=lambda: 1000.0,
        )
        after = time.time()
        received = 1000.0 + result.delay
        self.assertTrue(before <= received <= after, (before, received, after))
