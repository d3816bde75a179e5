"""
The reply path: how a datagram becomes a reply on the wire, and counts.

A port reads a datagram; L{ReplyPath.handle} asks the protocol for its
decision (L{UDPServerProtocol.decide<udptime.server.UDPServerProtocol.decide>}),
then sends the reply and counts what happened.  It is the one place where
replies are sent and where every counter is counted, for both ports:

  - udptime's own port (L{udptime.port.ServerPort}), which sends with its
    socket's C{sendto} (or C{sendmsg}, with the report of the address the
    request reached) and queues replies for one C{sendmmsg} per batch where
    the protocol allows it;
  - Twisted's generic port (C{listenUDP}, C{adoptDatagramPort} on reactors
    that are not C{posixbase}), whose C{datagramReceived} is the adapter
    that hands each datagram to a L{ReplyPath} sending with
    C{transport.write}.

What is counted, and when:

  - C{received}: every datagram read (L{ReplyPath.tally}, once per read);
  - a refusal's counter (C{malformed}, C{dropped}, C{limited}, C{denied},
    C{looped}) as it is decided;
  - C{answered} (answers, error lines) and C{kissed} (Kiss-o'-Death) once
    the kernel took the reply: at once, or for queued replies when their
    batch was sent;
  - C{sendFailed}: a reply the kernel refused, after the retries that can
    help (an interrupted call; an ICMP error left over from an earlier
    datagram, which the kernel reports once, on the next send);
  - C{internalErrors}: an exception out of C{decide}, which is a bug: caught
    here, and logged through the protocol's bounded-rate log.

A protocol that decides about a batch of requests at once (Roughtime, which
signs them together) answers C{decide} with L{HELD<udptime.decision.HELD>}:
the path keeps the datagram, and once the port has read its receive batch
(L{decideHeld}, called by L{tally}, or by the batched reader before it sends
its queue) asks the protocol's C{decideBatch} about all the datagrams held,
then carries out each decision as C{handle} does, counted the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from errno import EAGAIN, ECONNREFUSED, EINTR, ENOBUFS, EWOULDBLOCK
from operator import itemgetter
from os import strerror
from typing import TYPE_CHECKING, Final, TypeAlias

from twisted.internet.error import MessageLengthError

from udptime import counters
from udptime.address import Address
from udptime.clock import systemClock
from udptime.decision import HELD, Ancillary, Decision, LateReply, Refusal
from udptime.ntp import LateTransmit
from udptime.sendstep import SendCall

if TYPE_CHECKING:
    from udptime.mmsg import MessageBatch
    from udptime.server import UDPServerProtocol


_SEND_ERRORS: Final = (OSError, MessageLengthError)
"""What a send raises when the kernel refuses a reply (C{transport.write}
turns C{EMSGSIZE} into L{MessageLengthError})."""

_ANSWERED: Final = counters.ANSWERED
_LateTransmit: Final = LateTransmit
_SYSTEM_CLOCK: Final = systemClock

_Held: TypeAlias = tuple[bytes, Address, float, "Ancillary | None", "int | None"]
"""A held datagram: the arguments it was handled with."""

_dataOf: Final[Callable[[_Held], bytes]] = itemgetter(0)
_receivedOf: Final[Callable[[_Held], float]] = itemgetter(2)
_slotOf: Final[Callable[[_Held], int | None]] = itemgetter(4)


def _sendError(errno: int) -> OSError:
    """
    The L{OSError} (subclass) Python raises for a send that failed with
    C{errno}.
    """
    return OSError(errno, strerror(errno))


def _notQueued(reply: bytes, slot: int) -> bool:
    """
    The queue of a reply path that queues nothing.
    """
    return False


def _nothing() -> None:
    """
    Nothing to do before a reply that asks for its kernel transmit time.
    """


class ReplyPath:
    """
    Decide, send and count, for one protocol on one socket.

    @ivar protocol: the protocol that decides.
    @ivar counts: its counters (L{ServiceCounters.counts
        <udptime.counters.ServiceCounters.counts>}).
    @ivar decide: the protocol's C{decide} (C{decideLate} for a protocol
        whose replies carry their send time: a
        L{LateReply<udptime.decision.LateReply>} is stamped just before it
        is sent), or in verbose mode (the protocol's C{verbose} when the path
        was made) L{decideAndLog}, which logs every decision.
    @ivar decideQuietly: that decision, never logged.
    @ivar verbose: whether every decision is logged.
    @ivar sendto: sends a reply to an address at once; raises L{OSError}
        (or L{MessageLengthError}) when the kernel refuses it.
    @ivar sendmsg: C{socket.sendmsg}, for replies sent with control
        messages; L{None} where the port sends none.
    @ivar batch: the batch whose send slots queue replies, or L{None}.
    @ivar queueing: whether replies may be queued in L{batch}; not for a
        protocol whose replies carry their send time
        (L{UDPServerProtocol.transmitTimestamps
        <udptime.server.UDPServerProtocol.transmitTimestamps>}).
    @ivar queue: queues a reply to the source of a batch slot: whether it
        was queued (it never is when not L{queueing}).
    @ivar held: the datagrams the protocol decided to decide about with the
        rest of their receive batch (L{HELD}), until L{decideHeld}.
    @ivar timestamping: called before a reply that carries control messages
        of its own (the request for its kernel transmit time, see
        L{LateReply.control<udptime.decision.LateReply.control>}) is stamped
        and sent; the port's
        L{quieten<udptime.port.ServerPort.quieten>} where it reads kernel
        transmit times, otherwise nothing.
    @ivar sendStep: the socket's compiled send step (see
        L{udptime.sendstep}), which stamps and sends the NTP replies
        L{LateTransmit<udptime.ntp.LateTransmit>} stamps with its reply
        constants from the system clock, or L{None}: every reply is
        stamped and sent in Python.
    """

    def __init__(
        self,
        protocol: UDPServerProtocol,
        sendto: Callable[[bytes, Address], object],
        sendmsg: Callable[[Sequence[bytes], Ancillary, int, Address], object]
        | None = None,
        batch: MessageBatch | None = None,
        sendStep: SendCall | None = None,
    ) -> None:
        self.protocol = protocol
        self.decide: Callable[[bytes, Address, float], Decision] = protocol.decide
        if protocol.transmitTimestamps:
            self.decide = protocol.decideLate
        self.decideQuietly = self.decide
        if protocol.verbose:
            self.decide = self.decideAndLog
        self.counts = protocol.counters.counts
        self.verbose = protocol.verbose
        self.sendto = sendto
        self.sendmsg = sendmsg
        self.batch = batch
        self.queueing = batch is not None and not protocol.transmitTimestamps
        self.queue: Callable[[bytes, int], bool] = _notQueued
        if batch is not None and self.queueing:
            self.queue = batch.queue
        self.held: list[_Held] = []
        self.timestamping: Callable[[], object] = _nothing
        self.sendStep = sendStep

    def handle(
        self,
        data: bytes,
        addr: Address,
        received: float,
        ancillary: Ancillary | None = None,
        slot: int | None = None,
    ) -> int:
        """
        Decide about the datagram C{data} from C{addr}, received at Unix
        time C{received}, send the reply and count the decision: the one
        way every datagram goes.

        @param ancillary: control messages to send the reply with (the
            report of the address the datagram reached), or L{None}.
        @param slot: the batch receive slot of the datagram, when its reply
            may be queued in L{batch} (it is then sent with the slot's
            control messages, and counted when the batch is sent); L{None}
            to send it at once.
        @return: the answers sent at once (0 or 1), for the caller to count
            with its read (see L{tally}); everything else is counted here.
        """
        decide = self.decide
        try:
            decision = decide(data, addr, received)
        except Exception:
            self.failed(data, addr, received)
            return 0
        if decision.__class__ is not bytes:
            if decision is HELD:
                self.held.append((data, addr, received, ancillary, slot))
                return 0
            if decision.__class__ is not Refusal:
                # A LateReply: stamped with the time now, sent at once.
                # Everything about the send is settled before the clock is
                # read (in stamp()), so that the call comes right after.
                control = decision.control  # type: ignore[union-attr]
                if control is not None:
                    self.timestamping()
                    ancillary = control if ancillary is None else (*ancillary, *control)
                step = self.sendStep
                if (
                    step is not None
                    and decision.__class__ is _LateTransmit
                    and decision.clock is _SYSTEM_CLOCK
                ):
                    constants = decision.constants
                    if constants is not None:
                        # The compiled step: the clock's reading, the stamp
                        # and the send in one call (see udptime.sendstep).
                        sent = step(
                            decision.start,
                            decision.origin,
                            decision.receive,
                            decision.fuzz,
                            constants.fuzzBits,
                            constants.halfStepsPerSecond,
                            constants.offsetUnits,
                            addr,
                            ancillary,
                        )
                        if sent is not None:
                            if sent >= 0:
                                return 1
                            return self.retry(
                                _sendError(-sent),
                                decision.stamp(),
                                addr,
                                ancillary,
                            )
                        # An address the step does not convert: Python's.
                stamp = decision.stamp  # type: ignore[union-attr]
                try:
                    if ancillary is None:
                        sendto = self.sendto
                        sendto(stamp(), addr)
                    else:
                        sendmsg = self.sendmsg
                        sendmsg((stamp(),), ancillary, 0, addr)  # type: ignore[misc]
                except _SEND_ERRORS as failure:
                    # Stamped again for the new try.
                    return self.retry(failure, stamp(), addr, ancillary)
                return 1
            # A Refusal (told by its class: isinstance would cost three times
            # as much, on every datagram).
            reply = self.refused(decision, addr, ancillary, slot)
            if reply is None:
                return 0
            decision = reply
        if slot is not None:
            queue = self.queue
            if queue(decision, slot):
                return 0
            # Too long for a send slot, or every slot taken.
            ancillary = self.slotAncillary(slot)
        # transmit(), inline: this is every answer's way out.
        try:
            if ancillary is None:
                sendto = self.sendto
                sendto(decision, addr)
            else:
                self.transmit(decision, addr, ancillary)
        except _SEND_ERRORS as failure:
            return self.retry(failure, decision, addr, ancillary)
        return 1

    def refused(
        self,
        refusal: Refusal,
        addr: Address,
        ancillary: Ancillary | None,
        slot: int | None,
    ) -> bytes | None:
        """
        Count C{refusal}; send its reply at once if it has one that is not
        sent as answers are (a Kiss-o'-Death), and count it once sent.

        @return: the refusal's reply to send as answers are (an error
            line), or L{None}.
        """
        self.counts[refusal.counter] += 1
        reply = refusal.reply
        if reply is None or refusal.replyCounter == _ANSWERED:
            return reply
        if slot is not None:
            ancillary = self.slotAncillary(slot)
        try:
            self.transmit(reply, addr, ancillary)
        except _SEND_ERRORS as failure:
            if not self.retry(failure, reply, addr, ancillary):
                return None
        self.counts[refusal.replyCounter] += 1
        return None

    def transmit(
        self, reply: bytes, addr: Address, ancillary: Ancillary | None
    ) -> None:
        """
        Hand C{reply} to the kernel once: C{sendto}, or C{sendmsg} with
        C{ancillary}.

        @raise OSError: the kernel refused it (or L{MessageLengthError}).
        """
        if ancillary is None:
            self.sendto(reply, addr)
        else:
            assert self.sendmsg is not None
            self.sendmsg((reply,), ancillary, 0, addr)

    def retry(
        self,
        failure: Exception,
        reply: bytes,
        addr: Address,
        ancillary: Ancillary | None,
    ) -> int:
        """
        Sending C{reply} to C{addr} failed with C{failure}: whether it went
        out in the end (1) or is lost (0, counted as a failed send).  An
        interrupted call is repeated; so is, once, a call that reported an
        ICMP error left over from an earlier datagram (C{ECONNREFUSED}: the
        kernel reports it once, on the next send, which it fails).  Any
        other error loses the reply.
        """
        refusedBefore = False
        while True:
            errno = getattr(failure, "errno", None)
            if errno == EINTR or (errno == ECONNREFUSED and not refusedBefore):
                refusedBefore = refusedBefore or errno != EINTR
                try:
                    self.transmit(reply, addr, ancillary)
                except _SEND_ERRORS as again:
                    failure = again
                    continue
                return 1
            self.counts[counters.SEND_FAILED] += 1
            return 0

    def slotAncillary(self, slot: int) -> Ancillary | None:
        """
        The control messages to send a reply to the datagram of batch slot
        C{slot} with, sent on its own: the report of the address it
        reached, or L{None}.
        """
        batch = self.batch
        return None if batch is None else batch.ancillary(slot)

    def sendQueued(self, fd: int) -> None:
        """
        Send the replies queued in L{batch} on the socket C{fd}, and count
        them: the ones the kernel took as answered, any it refused (a full
        buffer, or any other error) as failed sends.
        """
        batch = self.batch
        assert batch is not None
        queued = batch.queued
        sent = 0
        retried = -1
        lost = 0
        while sent < queued:
            result = batch.send(fd, sent)
            if result > 0:
                sent += result
                continue
            errno = -result
            if errno == EINTR or (errno == ECONNREFUSED and retried != sent):
                # An interrupted call, or an ICMP error left over from an
                # earlier datagram (reported once): send that reply again.
                retried = sent
                continue
            if errno in (EAGAIN, EWOULDBLOCK, ENOBUFS):
                # The socket's buffer is full: so it is for the rest.
                lost += queued - sent
                break
            # Any other error (EMSGSIZE, a firewall's EPERM, ...) loses that
            # reply only; as for a reply sent at once, it is counted, not
            # logged.
            lost += 1
            sent += 1
        batch.queued = 0
        counts = self.counts
        counts[_ANSWERED] += queued - lost
        if lost:
            counts[counters.SEND_FAILED] += lost

    def decideHeld(self) -> int:
        """
        Ask the protocol about the datagrams it held (L{HELD}) all at once
        (C{decideBatch}, with the latest of their receive times), then carry
        out and count each decision as L{handle} does.  An exception out of
        C{decideBatch} (a bug) counts each of them as an internal error.

        @return: the answers sent at once, as L{handle}'s.
        """
        held, self.held = self.held, []
        protocol = self.protocol
        latest = max(map(_receivedOf, held))
        try:
            decisions = protocol.decideBatch(list(map(_dataOf, held)), latest)
            if len(decisions) != len(held):
                raise ValueError(
                    f"{len(decisions)} decisions for {len(held)} datagrams"
                )
        except Exception:
            for data, addr, received, _, _ in held:
                self.failed(data, addr, received)
            return 0
        batch = self.batch
        if not self.verbose and self.queueing and batch is not None:
            # An answer to a datagram of a batch slot goes straight into the
            # send queue (counted when the batch is sent), as handle() would
            # put it; the rest go through handle().
            left = batch.queueAll(decisions, list(map(_slotOf, held)))
            if not left:
                return 0
            if len(left) < len(held):
                held = [held[position] for position in left]
                decisions = [decisions[position] for position in left]
        each = iter(decisions)

        def decided(data: bytes, addr: Address, received: float) -> Decision:
            decision = next(each)
            if self.verbose:
                self.logDecision(data, addr, decision, received)
            return decision

        # handle() once more for each, with its decision already made.
        decide, self.decide = self.decide, decided
        try:
            return sum(self.handle(*arguments) for arguments in held)
        finally:
            self.decide = decide

    def tally(self, received: int, answered: int) -> None:
        """
        Count the C{received} datagrams of a read, and the C{answered} of
        them whose answers L{handle} sent at once; first decide about the
        datagrams of the read that were held (L{decideHeld}).
        """
        if self.held:
            answered += self.decideHeld()
        counts = self.counts
        counts[counters.RECEIVED] += received
        counts[_ANSWERED] += answered

    def failed(self, data: bytes, addr: Address, received: float) -> None:
        """
        The protocol failed to decide about C{data} (a bug): count it, and
        log it through the protocol's bounded-rate log.
        """
        self.counts[counters.INTERNAL_ERRORS] += 1
        self.protocol.logFailure(data, addr, received)

    def decideAndLog(self, data: bytes, addr: Address, received: float) -> Decision:
        """
        The protocol's decision about C{data}, logged (L{decide} in verbose
        mode).
        """
        decision = self.decideQuietly(data, addr, received)
        if decision is not HELD:
            self.logDecision(data, addr, decision, received)
        return decision

    def logDecision(
        self, data: bytes, addr: Address, decision: Decision, received: float
    ) -> None:
        """
        Log one line about a decision about a datagram received at
        C{received} (in verbose mode only), unless the protocol's bound on
        these lines (its C{verboseLog}) leaves it out.
        """
        protocol = self.protocol
        limit = protocol.verboseLog
        if limit is not None and not limit.admit(received):
            return
        if type(decision) is bytes or isinstance(decision, LateReply):
            protocol.log.info(
                "{service}: {size}-byte request from {addr}, {replySize}-byte reply",
                service=protocol.serviceName,
                size=len(data),
                addr=addr,
                replySize=len(decision),
            )
            return
        assert isinstance(decision, Refusal)
        reply = decision.reply
        protocol.log.info(
            "{service}: {size}-byte request from {addr}, {outcome}{replied}",
            service=protocol.serviceName,
            size=len(data),
            addr=addr,
            outcome=decision.name,
            replied="" if reply is None else f", {len(reply)}-byte reply",
        )
