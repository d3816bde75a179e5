"""
A UDP port specialised for udptime's request/response services.

L{ServerPort} is an ordinary Twisted L{udp.Port}, driven by the reactor like
any other, with a leaner read-answer-send path for servers:

  - it reads a bounded batch of datagrams per wake-up and asks
    L{UDPServerProtocol.answer} for the reply to each, with its receive
    time, skipping C{datagramReceived} and a clock read in between; it
    sends the reply itself, to the very address tuple the kernel gave, and
    counts it as answered;
  - with kernel receive timestamps on (C{SO_TIMESTAMPNS}), the receive
    time is the moment the kernel queued the datagram, read with C{recvmsg},
    instead of the moment the event loop got round to it;
  - on a socket bound to a wildcard address, each reply leaves from the
    address its request reached: the kernel reports that address with each
    datagram (C{IP_PKTINFO}, C{IPV6_PKTINFO}), and the reply is sent with
    the report (see L{destinationReports});
  - a write of the protocol's own (a refusal) to the address of the
    datagram being answered goes straight to C{sendto}: the generic port
    checks on every write that the address is an IP address literal, which
    a kernel-supplied address always is.  Any other write takes the
    generic, checked path;
  - on Linux it batches its system calls (L{udptime.mmsg}): one C{recvmmsg}
    reads up to L{MAX_DATAGRAMS_PER_READ} datagrams with their sources (and
    kernel timestamps), and the replies to them are copied into a queue and
    sent with one C{sendmmsg} once the batch is answered, each to the
    C{sockaddr} the kernel gave for its request.  Replies that carry their
    own send time (NTP's transmit timestamp, see
    L{UDPServerProtocol.transmitTimestamps}) and refusals are not held back:
    they go out at once.

Replies and policy decisions are the protocol's, exactly as on the generic
port; only the plumbing differs.  Errors never escape a read: a failing
socket call ends the batch or counts a lost reply, and a bug in the protocol
is logged and counted, as C{udp.Port} does for C{datagramReceived}.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from errno import EAGAIN, ECONNREFUSED, EINTR, EMSGSIZE, ENOBUFS, EWOULDBLOCK
from itertools import repeat
from typing import Any, Final

from twisted.internet import error, udp
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger

from udptime import mmsg
from udptime.address import Address
from udptime.ancillary import (
    SCM_TIMESTAMPNS,
    SO_TIMESTAMPNS,
    TIMESPEC,
    TIMESTAMP_SPACE,
    DestinationReports,
    destinationReports,
)
from udptime.server import UDPServerProtocol, exceptionText

_WILDCARDS: Final = frozenset({"0.0.0.0", "::"})

_Header = tuple[int, int, int, int]
"""
A receive slot's source address length, control length, flags and datagram
length, as the readers of L{mmsg.MessageBatch.readPlan} give them.
"""

_Timestamp = tuple[int, int, int, int, int]
"""
A receive slot's control message: its length, level, type, seconds and
nanoseconds.
"""

DEFAULT_KERNEL_TIMESTAMPS: Final = True
"""
Whether services take receive times from the kernel unless told otherwise
(see the README's performance section for what it costs).
"""

MAX_DATAGRAMS_PER_READ: Final = 128
"""
Datagrams read per wake-up at most, so that one busy port cannot starve the
reactor's other work (other ports, timers, signals).
"""


def batchingAvailable() -> bool:
    """
    Whether this system can batch a port's system calls (Linux's
    C{recvmmsg} and C{sendmmsg}, through C{ctypes}).
    """
    return mmsg.available()


class ServerPort(udp.Port):
    """
    A UDP port that serves a L{UDPServerProtocol}.

    Create one over a bound socket with L{ServerPort.adopt}.

    @ivar kernelTimestamps: take each datagram's receive time from the
        kernel (C{SO_TIMESTAMPNS}).
    @ivar maxDatagramsPerRead: the bound on datagrams read per wake-up.
    """

    log = Logger()
    protocol: UDPServerProtocol
    kernelTimestamps = False
    maxDatagramsPerRead = MAX_DATAGRAMS_PER_READ
    _destinations: DestinationReports | None = None
    _answering: Address | None = None
    _answeringAncillary: Sequence[tuple[int, int, Any]] | None = None
    _answeringIndex: int | None = None
    _batch: mmsg.MessageBatch | None = None
    _queue: Callable[[bytes, int], bool] | None = None

    @classmethod
    def adopt(
        cls,
        reactor: IReactorFDSet,
        sock: socket.socket,
        protocol: UDPServerProtocol,
        maxPacketSize: int,
        kernelTimestamps: bool = False,
        batched: bool | None = None,
        replyFromDestination: bool | None = None,
    ) -> ServerPort:
        """
        Serve C{protocol} on the bound, non-blocking UDP socket C{sock}, as
        C{reactor.adoptDatagramPort} does: the port works on a duplicate of
        the descriptor, and the caller still owns (and closes) C{sock}.

        @param batched: read and answer datagrams in batches with
            C{recvmmsg}/C{sendmmsg}; L{None} to do so where
            L{batchingAvailable}.  Where the system cannot batch, the port
            reads and sends one datagram at a time.
        @param replyFromDestination: send each reply from the address its
            request reached (see L{destinationReports}); L{None} to do so
            when C{sock} is bound to a wildcard address (C{0.0.0.0}, C{::}),
            where the kernel would otherwise pick the reply's source by its
            routes, which on a host with several addresses of a family need
            not be the one the client asked, and where this system can.
        @raise error.UnsupportedAddressFamily: C{sock} is not IPv4 or IPv6.
        @raise ValueError: kernel timestamps were asked for where the
            system has none.
        """
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise error.UnsupportedAddressFamily(sock.family)
        if kernelTimestamps and SO_TIMESTAMPNS is None:
            raise ValueError("this system has no kernel receive timestamps")
        port: ServerPort = cls._fromListeningDescriptor(  # type: ignore[no-untyped-call]
            reactor, sock.fileno(), sock.family, protocol, maxPacketSize
        )
        port.kernelTimestamps = kernelTimestamps
        if replyFromDestination is None:
            replyFromDestination = sock.getsockname()[0] in _WILDCARDS
        if replyFromDestination:
            port._destinations = destinationReports(sock.family)
        if batched is not False and mmsg.available():
            destinations = port._destinations
            try:
                port._batch = mmsg.MessageBatch(
                    MAX_DATAGRAMS_PER_READ,
                    maxPacketSize,
                    sock.family,
                    kernelTimestamps,
                    destinations.size if destinations else 0,
                )
                if not protocol.transmitTimestamps:
                    port._queue = port._batch.queue
            except (OSError, ValueError) as failure:
                cls.log.warn(
                    "{service}: no batched system calls, one datagram at a time: "
                    "{error}",
                    service=protocol.serviceName,
                    error=failure,
                )
        port.startListening()  # type: ignore[no-untyped-call]
        return port

    @property
    def batched(self) -> bool:
        """
        Whether this port reads and answers datagrams in batches.
        """
        return self._batch is not None

    @property
    def replyFromDestination(self) -> bool:
        """
        Whether each reply leaves from the address its request reached.
        """
        return self._destinations is not None

    def _bindSocket(self) -> None:
        super()._bindSocket()  # type: ignore[no-untyped-call]
        if SO_TIMESTAMPNS is not None:
            self.socket.setsockopt(
                socket.SOL_SOCKET, SO_TIMESTAMPNS, int(self.kernelTimestamps)
            )
        if self._destinations is not None:
            reports = self._destinations
            self.socket.setsockopt(reports.level, reports.option, 1)

    def doRead(self) -> None:
        """
        Answer the datagrams waiting on the socket, at most
        L{maxDatagramsPerRead} of them.
        """
        if self._batch is not None:
            self._readBatches(self._batch)
            return
        if self._destinations is not None or self.kernelTimestamps:
            self._readWithControl(self._destinations)
            return
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        protocol = self.protocol
        answerOne = self._answerOne
        clock = protocol.clock
        ipv6 = self.addressFamily == socket.AF_INET6
        answered = 0
        for _ in range(self.maxDatagramsPerRead):
            try:
                data, addr = recvfrom(size)
            except OSError as failure:
                if self._readFailed(failure):
                    continue
                break
            if ipv6:
                addr = addr[:2]
            answered += answerOne(data, addr, clock())
        self._answering = None
        protocol.counters.answered += answered

    def _readWithControl(self, destinations: DestinationReports | None) -> None:
        # doRead's loop with recvmsg, for a socket that gives each datagram's
        # kernel timestamp, or reports the address it reached (which its
        # reply is sent back with), or both.
        recvmsg = self.socket.recvmsg
        size = self.maxPacketSize
        protocol = self.protocol
        answerOne = self._answerOne
        clock = protocol.clock
        unpack = TIMESPEC.unpack
        level, kind, room = -1, -1, 0
        if destinations is not None:
            level, kind = destinations.level, destinations.kind
            room = destinations.space
        timestamps = self.kernelTimestamps
        if timestamps:
            room += TIMESTAMP_SPACE
        ipv6 = self.addressFamily == socket.AF_INET6
        answered = 0
        for _ in range(self.maxDatagramsPerRead):
            try:
                data, ancillary, _flags, addr = recvmsg(size, room)
            except OSError as failure:
                if self._readFailed(failure):
                    continue
                break
            received = None
            reached = None
            for message in ancillary:
                if message[1] == kind and message[0] == level:
                    reached = [message]
                elif (
                    timestamps
                    and message[1] == SCM_TIMESTAMPNS
                    and message[0] == socket.SOL_SOCKET
                ):
                    seconds, nanoseconds = unpack(message[2])
                    received = seconds + nanoseconds * 1e-9
            if received is None:
                received = clock()
            if ipv6:
                addr = addr[:2]
            answered += answerOne(data, addr, received, reached)
        self._answering = self._answeringAncillary = None
        protocol.counters.answered += answered

    def _answerOne(
        self,
        data: bytes,
        addr: Address,
        received: float,
        ancillary: Sequence[tuple[int, int, Any]] | None = None,
    ) -> int:
        """
        Answer one datagram read on its own, sending the reply at once (with
        C{ancillary}, the control message of the address it reached, if
        any): whether a reply went out (1) or not (0).
        """
        self._answering = addr
        self._answeringAncillary = ancillary
        try:
            reply = self.protocol.answer(data, addr, received)
        except BaseException:
            self._handlerFailed(data, addr)
            return 0
        if reply is None:
            return 0
        try:
            if ancillary is None:
                self.socket.sendto(reply, addr)
            else:
                self.socket.sendmsg((reply,), ancillary, 0, addr)
        except OSError as failure:
            return self._sendFailed(failure, reply, addr, ancillary)
        return 1

    def _readBatches(self, batch: mmsg.MessageBatch) -> None:
        # doRead with recvmmsg and sendmmsg: a batch of datagrams per call,
        # their replies queued and sent together (unless the protocol's
        # replies carry their send time: then each goes out at once).
        fd = self.socket.fileno()
        sendto = self.socket.sendto
        sendmsg = self.socket.sendmsg
        protocol = self.protocol
        counters = protocol.counters
        answer = protocol.answer
        clock = protocol.clock
        queue = self._queue
        # What the loop reads the batch with, prepared once (a wake-up may
        # bring a single datagram): the headers, sources and control
        # messages of a batch are unpacked all at once, with iter_unpack,
        # one call each instead of one per datagram.
        plan = batch.readPlan
        eachReceived, firstReceived = plan.eachHeader, plan.firstHeader
        eachName, firstName = plan.eachName, plan.firstName
        eachTimestamp, firstTimestamp = plan.eachTimestamp, plan.firstTimestamp
        headers, names, controls = plan.headers, plan.names, plan.controls
        data, addresses, stride = plan.data, plan.addresses, plan.stride
        headerSize, nameSize, controlSize = (
            plan.headerSize,
            plan.nameSize,
            plan.controlSize,
        )
        fullName = plan.nameLength
        timestamps = self.kernelTimestamps and controlSize
        level, kind = socket.SOL_SOCKET, SCM_TIMESTAMPNS
        destinations = self._destinations
        if destinations is not None:
            reachedLevel, reachedKind = destinations.level, destinations.kind
            reachedSize, reachedAt = destinations.size, batch.destinationAt
        answered = 0
        remaining = self.maxDatagramsPerRead
        while remaining > 0:
            wanted = min(remaining, batch.count)
            got = batch.receive(fd, wanted)
            if got <= 0:
                if got < 0 and self._readFailed(_osError(-got)):
                    continue
                break
            rows: Iterable[tuple[int, _Header, tuple[bytes], _Timestamp | None]]
            batchQueue = queue
            if got == 1:
                # A lone datagram, as most wake-ups of a server that is not
                # flooded bring: its slot is read directly, which costs less
                # than making the iterators below, and its reply goes out at
                # once, as a sendmmsg of one reply costs more than a sendto.
                stamp = firstTimestamp(controls) if timestamps else None
                rows = ((0, firstReceived(headers), firstName(names), stamp),)
                batchQueue = None
            else:
                stamps: Iterable[_Timestamp | None]
                if timestamps:
                    stamps = eachTimestamp(controls[: got * controlSize])
                else:
                    stamps = repeat(None, got)
                rows = zip(
                    range(got),
                    eachReceived(headers[: got * headerSize]),
                    eachName(names[: got * nameSize]),
                    stamps,
                    strict=True,
                )
            for index, header, (raw,), stamp in rows:
                nameLength, controlLength, _flags, length = header
                rowQueue = batchQueue
                start = index * stride
                datagram = data[start : start + length]
                if stamp is None:
                    received = clock()
                else:
                    _, cmsgLevel, cmsgKind, seconds, nanoseconds = stamp
                    if (
                        controlLength == controlSize
                        and cmsgKind == kind
                        and cmsgLevel == level
                    ):
                        received = seconds + nanoseconds * 1e-9
                    else:
                        received = clock()
                if nameLength != fullName or controlLength != controlSize:
                    batch.restore(index, nameLength, controlLength)
                    raw = raw[:nameLength]
                    if controlLength != controlSize:
                        # Not the control messages asked for (no room for
                        # them?): the reply goes out on its own, from the
                        # address the kernel picks.
                        rowQueue = None
                addr = addresses.get(raw)
                if addr is None:
                    try:
                        addr = batch.convert(raw)
                    except OSError as failure:
                        self._unknownSource(failure)
                        continue
                self._answering = addr
                self._answeringIndex = index
                try:
                    reply = answer(datagram, addr, received)
                except BaseException:
                    self._handlerFailed(datagram, addr)
                    continue
                if reply is None:
                    continue
                if rowQueue is not None and rowQueue(reply, index):
                    answered += 1
                    continue
                ancillary = None
                try:
                    if destinations is not None and controlLength == controlSize:
                        # The destination's control message as received,
                        # sent back without a copy.
                        start = index * controlSize + reachedAt
                        ancillary = (
                            (
                                reachedLevel,
                                reachedKind,
                                controls[start : start + reachedSize],
                            ),
                        )
                        sendmsg((reply,), ancillary, 0, addr)
                    else:
                        sendto(reply, addr)
                except OSError as failure:
                    answered += self._sendFailed(failure, reply, addr, ancillary)
                else:
                    answered += 1
            self._answering = self._answeringIndex = None
            counters.answered += answered
            answered = 0
            if batch.queued:
                self._sendQueued(fd, batch)
            if got < wanted:
                break
            remaining -= got

    def _sendQueued(self, fd: int, batch: mmsg.MessageBatch) -> None:
        """
        Send the replies queued in C{batch}.  A reply the kernel refuses
        (full buffer, or any other error) is lost, and counted as a failed
        send instead of an answer, as the one-at-a-time path counts it: a
        queued reply was counted as answered when it was queued.
        """
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
            # reply only; as on the generic path it is counted, not logged.
            lost += 1
            sent += 1
        batch.queued = 0
        if lost:
            counters = self.protocol.counters
            counters.answered -= lost
            counters.sendFailed += lost

    def _unknownSource(self, failure: OSError) -> None:
        self.log.error(
            "{service}: dropped a datagram from an unreadable address: {error}",
            service=self.protocol.serviceName,
            error=failure,
        )

    def _readFailed(self, failure: OSError) -> bool:
        """
        A read failed: whether to go on reading in this wake-up.  Nothing is
        waiting (C{EAGAIN}) ends the batch; an interrupted call or an error
        the kernel reports for an earlier datagram (ICMP errors, e.g.
        C{ECONNREFUSED}) is skipped; anything else is logged and ends it.
        """
        if isinstance(failure, BlockingIOError):
            return False
        if isinstance(failure, InterruptedError | ConnectionError):
            return True
        self.log.error(
            "{service}: reading the socket failed: {error}",
            service=self.protocol.serviceName,
            error=failure,
        )
        return False

    def _handlerFailed(self, data: bytes, addr: Address) -> None:
        self.protocol.counters.internalErrors += 1
        self.log.failure(
            "{service} failed on a {size}-byte datagram from {addr}: {error}",
            service=self.protocol.serviceName,
            size=len(data),
            addr=addr,
            error=exceptionText(),
        )

    def _sendFailed(
        self,
        failure: OSError,
        reply: bytes,
        addr: Address,
        ancillary: Sequence[tuple[int, int, Any]] | None = None,
    ) -> int:
        """
        Sending C{reply} to C{addr} (with C{ancillary}, if any) at once
        failed with C{failure}: whether it went out in the end (1) or is
        lost (0, counted as a failed send).  An interrupted call is
        repeated; so is, once, a call that reported an ICMP error left over
        from an earlier datagram (C{ECONNREFUSED}: the kernel reports it
        once, on the next send, which it fails).  Any other error loses the
        reply.
        """
        refusedBefore = False
        while True:
            if failure.errno == EINTR or (
                isinstance(failure, ConnectionRefusedError) and not refusedBefore
            ):
                refusedBefore = refusedBefore or failure.errno != EINTR
                try:
                    self._send(reply, addr, ancillary)
                except OSError as again:
                    failure = again
                    continue
                return 1
            self.protocol.counters.sendFailed += 1
            return 0

    def write(self, datagram: bytes, addr: Any = None) -> None:
        """
        Send C{datagram} to C{addr}, at once.  A write to the address of the
        datagram being answered (a refusal the protocol writes itself) goes
        straight to C{sendto}; any other write is checked as on the generic
        port.  Failures raise as on the generic port: L{OSError}, or
        L{error.MessageLengthError} for a datagram too long to send.
        """
        answering = self._answering
        if answering is not None and addr is answering:
            try:
                self._send(datagram, answering, self._answeredAncillary())
            except OSError as failure:
                if failure.errno == EINTR:
                    self.write(datagram, answering)
                elif failure.errno == EMSGSIZE:
                    raise error.MessageLengthError("message too long") from None
                elif not isinstance(failure, ConnectionRefusedError):
                    raise
        else:
            super().write(datagram, addr)

    def _send(
        self,
        datagram: bytes,
        addr: Address,
        ancillary: Sequence[tuple[int, int, Any]] | None,
    ) -> None:
        if ancillary is None:
            self.socket.sendto(datagram, addr)
        else:
            self.socket.sendmsg((datagram,), ancillary, 0, addr)

    def _answeredAncillary(self) -> Sequence[tuple[int, int, Any]] | None:
        """
        The control message that makes a datagram leave from the address
        the datagram being answered reached, or L{None}.
        """
        batch, destinations = self._batch, self._destinations
        if batch is None or destinations is None:
            return self._answeringAncillary
        index = self._answeringIndex
        reached = None if index is None else batch.destination(index)
        if reached is None:
            return None
        return [(destinations.level, destinations.kind, reached)]


def _osError(errno: int) -> OSError:
    """
    The L{OSError} (subclass) Python raises for C{errno}.
    """
    return OSError(errno, os.strerror(errno))
