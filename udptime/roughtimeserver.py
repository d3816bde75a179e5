"""
Serving Roughtime: L{RoughtimeResponder} decides the responses to a batch of
datagrams (a whole receive batch of a port, or one datagram), and
L{RoughtimeServer} is a plain L{DatagramProtocol} that answers each datagram
as a batch of one::

    from twisted.internet import reactor
    from udptime.clock import ClockSource
    from udptime.roughtimekeys import OnlineKey, loadLongTermKey
    from udptime.roughtimeserver import RoughtimeResponder, RoughtimeServer

    online = OnlineKey(loadLongTermKey("/etc/udptime/roughtime.key"))
    responder = RoughtimeResponder(online, ClockSource().state)
    reactor.listenUDP(2002, RoughtimeServer(responder))
    reactor.run()

The responder answers only while the clock state is synchronised (see
L{udptime.roughtime.radiusFor}): a Roughtime response is a signed promise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from udptime.clock import ClockState, WallClock, systemClock
from udptime.policy import RateLimiter
from udptime.roughtime import (
    DEFAULT_RADIUS_FLOOR,
    DropReason,
    radiusFor,
    respondBatch,
)
from udptime.roughtimekeys import OnlineKey

LOG_RATE = 0.2
"""Log lines per second about dropped datagrams, sustained."""
LOG_BURST = 10
"""Log lines about dropped datagrams written back to back."""


class RoughtimeResponder:
    """
    The decisions of a Roughtime service, without I/O: the responses to a
    batch of datagrams received at one time.

    @ivar onlineKey: delegates and renews the key that signs responses.
    @ivar clockState: the clock's state at a given Unix time (for example
        C{ClockSource.state}), from which the radius is decided.
    @ivar radiusFloor: the smallest radius sent, in seconds.
    @ivar dropped: datagrams dropped, by L{DropReason}.
    @ivar unsynchronised: datagrams dropped because the clock was not
        synchronised.
    @ivar answered: responses made.
    @ivar batches: batches answered (one signature each per version).
    """

    def __init__(
        self,
        onlineKey: OnlineKey,
        clockState: Callable[[float], ClockState],
        radiusFloor: int = DEFAULT_RADIUS_FLOOR,
    ) -> None:
        """
        @raise ValueError: C{radiusFloor} is below 1.
        """
        if radiusFloor < 1:
            raise ValueError(f"the radius floor must be at least 1, not {radiusFloor}")
        self.onlineKey = onlineKey
        self.clockState = clockState
        self.radiusFloor = radiusFloor
        self.dropped: Counter[DropReason] = Counter()
        self.unsynchronised = 0
        self.answered = 0
        self.batches = 0

    def respond(self, datagrams: Sequence[bytes], now: float) -> list[bytes | None]:
        """
        The response to each of C{datagrams}, received together and
        processed at Unix time C{now}, or L{None} for those dropped: all of
        them while the clock is not synchronised.
        """
        radius = radiusFor(self.clockState(now), self.radiusFloor)
        if radius is None:
            self.unsynchronised += len(datagrams)
            return [None] * len(datagrams)
        delegation = self.onlineKey.current(now)
        responses = respondBatch(datagrams, now, radius, delegation, self.dropped)
        answered = len(responses) - responses.count(None)
        self.answered += answered
        if answered:
            self.batches += 1
        return responses


class RoughtimeServer(DatagramProtocol):
    """
    A Roughtime server on a Twisted UDP port: each datagram is answered, or
    dropped, as a batch of one.

    @ivar responder: decides the responses.
    @ivar clock: the wall clock.
    @ivar failures: datagrams on which the responder failed (bugs).
    """

    log = Logger()

    def __init__(
        self, responder: RoughtimeResponder, clock: WallClock = systemClock
    ) -> None:
        self.responder = responder
        self.clock = clock
        self.failures = 0
        self._logLimit = RateLimiter(LOG_RATE, LOG_BURST)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Answer C{datagram}, to the address it came from.
        """
        now = self.clock()
        responder = self.responder
        before = sum(responder.dropped.values()) + responder.unsynchronised
        try:
            (response,) = responder.respond([datagram], now)
        except Exception:
            self.failures += 1
            if self._logLimit.admit(now):
                self.log.failure(
                    "Roughtime: failed to answer a datagram from {addr}", addr=addr
                )
            return
        if response is None:
            if self._logLimit.admit(now):
                reasons = {str(k): v for k, v in responder.dropped.items()}
                reasons["unsynchronised"] = responder.unsynchronised
                self.log.info(
                    "Roughtime: dropped a datagram of {size} bytes from {addr}"
                    " ({total} dropped so far: {reasons})",
                    size=len(datagram),
                    addr=addr,
                    total=before + 1,
                    reasons=", ".join(f"{k} {v}" for k, v in sorted(reasons.items())),
                )
            return
        assert self.transport is not None
        self.transport.write(response, addr)
