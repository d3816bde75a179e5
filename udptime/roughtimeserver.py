"""
Serving Roughtime: L{RoughtimeResponder} decides the responses to a batch of
datagrams, and L{RoughtimeServer} is the service's protocol: it holds each
admitted request until the port has read its whole receive batch, then has
the batch answered at once, with one Merkle tree and one signature (see
L{udptime.replies} for how a port holds and decides them).  On Twisted's
own port (C{listenUDP}) each datagram is a batch of one::

    from twisted.internet import reactor
    from udptime.clock import ClockSource
    from udptime.roughtimekeys import OnlineKey, loadLongTermKey
    from udptime.roughtimeserver import RoughtimeResponder, RoughtimeServer

    online = OnlineKey(loadLongTermKey("/etc/udptime/roughtime.key"))
    responder = RoughtimeResponder(online, ClockSource().state)
    reactor.listenUDP(2002, RoughtimeServer(responder))
    reactor.run()

Under C{twistd udptime --roughtime-port N --roughtime-key FILE} it is one of
the services of L{udptime.services.SERVICES}, behind the same admission
policy and counters as the others.

The responder answers only while the clock state is synchronised (see
L{udptime.roughtime.radiusFor}): a Roughtime response is a signed promise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

from udptime.address import Address, formatAddress
from udptime.clock import ClockState, WallClock, systemClock
from udptime.decision import DROPPED, HELD, MALFORMED, Decision
from udptime.policy import Policy
from udptime.roughtime import (
    DEFAULT_RADIUS_FLOOR,
    MIN_REQUEST_SIZE,
    DropReason,
    RequestShapes,
    answerBatch,
    radiusFor,
)
from udptime.roughtimekeys import OnlineKey, publicKeyText
from udptime.server import UDPServerProtocol


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
    @ivar shapes: the shapes of the requests met, by which most requests
        are read (see L{RequestShapes<udptime.roughtime.RequestShapes>}).
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
        self.shapes = RequestShapes()

    def respond(self, datagrams: Sequence[bytes], now: float) -> list[bytes | None]:
        """
        The response to each of C{datagrams}, received together and
        processed at Unix time C{now}, or L{None} for those dropped: all of
        them while the clock is not synchronised.
        """
        return [
            answer if isinstance(answer, bytes) else None
            for answer in self.answer(datagrams, now)
        ]

    def answer(
        self, datagrams: Sequence[bytes], now: float
    ) -> list[bytes | DropReason] | list[Unsynchronised]:
        """
        The response to each of C{datagrams}, received together and
        processed at Unix time C{now}, or why it is dropped: the
        L{DropReason}, or for all of them L{UNSYNCHRONISED} while the clock
        is not synchronised.  Each is counted.
        """
        radius = radiusFor(self.clockState(now), self.radiusFloor)
        if radius is None:
            self.unsynchronised += len(datagrams)
            return [UNSYNCHRONISED] * len(datagrams)
        delegation = self.onlineKey.current(now)
        dropped = self.dropped
        before = dropped.total()
        answers = answerBatch(datagrams, now, radius, delegation, dropped, self.shapes)
        answered = len(datagrams) - (dropped.total() - before)
        self.answered += answered
        if answered:
            self.batches += 1
        return answers


class Unsynchronised:
    """
    The type of L{UNSYNCHRONISED}.
    """

    def __repr__(self) -> str:
        return "UNSYNCHRONISED"


UNSYNCHRONISED: Final = Unsynchronised()
"""Why every datagram of a batch is dropped while the clock is not
synchronised."""


class RoughtimeServer(UDPServerProtocol):
    """
    Roughtime (RFC 10049): requests of at least
    L{MIN_REQUEST_SIZE<udptime.roughtime.MIN_REQUEST_SIZE>} bytes admitted
    by the policy are held (L{HELD}) until their receive batch is read, then
    answered together (L{decideBatch}); shorter datagrams are dropped at
    once.  A datagram that is not a request this server answers is counted
    as malformed (not a Roughtime request) or dropped (a version not spoken,
    another server's key, a response that would outgrow its request, the
    clock not synchronised), and logged at a bounded rate.

    @ivar responder: decides the responses.
    """

    serviceName = "roughtime"

    def __init__(
        self,
        responder: RoughtimeResponder,
        *,
        clock: WallClock = systemClock,
        verbose: bool = False,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(clock=clock, verbose=verbose, policy=policy)
        self.responder = responder

    def startProtocol(self) -> None:
        """
        Log the long-term public key clients need, as the service starts.
        """
        super().startProtocol()
        self.log.info(
            "{service}: long-term public key {publicKey}",
            service=self.serviceName,
            publicKey=publicKeyText(self.responder.onlineKey.longTermKey),
        )

    def stopProtocol(self) -> None:
        """
        Log how many responses were signed, in how many batches (one
        signature each).
        """
        super().stopProtocol()  # type: ignore[no-untyped-call]
        responder = self.responder
        self.log.info(
            "{service}: {answered} responses signed in {batches} batches",
            service=self.serviceName,
            answered=responder.answered,
            batches=responder.batches,
        )

    def respond(self, data: bytes, addr: Address, received: float) -> Decision:
        if len(data) < MIN_REQUEST_SIZE:
            self.responder.dropped[DropReason.SHORT] += 1
            self.logDrop(received, len(data), addr, DropReason.SHORT)
            return DROPPED
        return HELD

    def decideBatch(
        self, datagrams: Sequence[bytes], received: float
    ) -> list[Decision]:
        """
        Answer the held C{datagrams} together, at the latest of their
        receive times: one Merkle tree and one signature for the batch.
        """
        responder = self.responder
        before = responder.answered
        answers = responder.answer(datagrams, received)
        if responder.answered - before == len(datagrams):
            # All answered (as under load): the responses are the decisions.
            return answers  # type: ignore[return-value]
        decisions: list[Decision] = []
        for data, answer in zip(datagrams, answers, strict=True):
            if isinstance(answer, bytes):
                decisions.append(answer)
                continue
            decisions.append(MALFORMED if answer is DropReason.MALFORMED else DROPPED)
            reason = "clock not synchronised" if answer is UNSYNCHRONISED else answer
            self.logDrop(received, len(data), None, reason)
        return decisions

    def logDrop(
        self, received: float, size: int, addr: Address | None, reason: object
    ) -> None:
        """
        Log, at a bounded rate, a datagram of C{size} bytes dropped for
        C{reason}.
        """
        self.logBadInput(
            received,
            "{service}: dropped {size} bytes{source}: {reason}",
            size=size,
            source="" if addr is None else f" from {formatAddress(*addr[:2])}",
            reason=reason,
        )
