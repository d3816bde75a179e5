"""
udptime's server port, and the reply path a datagram takes through it.

A datagram's way through the server, one way only:

  1. The port reads it.  L{ServerPort} is an ordinary Twisted
     L{twisted.internet.udp.Port}, driven by the reactor like any other,
     that reads a bounded batch of datagrams per wake-up with one of
     three readers: L{OneAtATime}
     (C{recvfrom}); L{WithControl} (C{recvmsg}, for kernel receive
     timestamps, C{SO_TIMESTAMPNS}, and reports of the address each
     datagram reached, C{IP_PKTINFO}/C{IPV6_PKTINFO}, on a socket bound to
     a wildcard address); L{Batched} (C{recvmmsg} on Linux, see
     L{udptime.mmsg}: up to L{MAX_DATAGRAMS_PER_READ} datagrams per call,
     with their sources and control messages).  The receive time is the
     kernel's timestamp when the port takes them, or the clock's reading.
  2. The protocol decides, through one method:
     L{UDPServerProtocol.decide<udptime.server.UDPServerProtocol.decide>}
     C{(data, addr, received)} applies the admission policy and the codec,
     and returns a L{Decision<udptime.decision.Decision>}: the reply's
     bytes, or a L{Refusal<udptime.decision.Refusal>} naming the counter it
     is counted under (and a reply to send all the same, if any: an error
     line, a Kiss-o'-Death).  It never writes to the socket, nor counts.
  3. The port sends and counts, in one place: the port's
     L{ReplyPath<udptime.replies.ReplyPath>}.  A reply goes out at once
     with C{sendto} (C{sendmsg} with the request's destination report, so
     that it leaves from the address asked), to the very address tuple the
     kernel gave, or is copied into a queue sent with one C{sendmmsg} per
     batch (to the C{sockaddr} the kernel gave) when the protocol allows it:
     replies that carry their own send time (NTP's transmit timestamp, see
     L{UDPServerProtocol.transmitTimestamps
     <udptime.server.UDPServerProtocol.transmitTimestamps>}) and
     Kiss-o'-Death replies always go at once, and so does the reply to a
     datagram read alone.

Twisted's generic port (reactors that are not C{posixbase}, and
C{listenUDP} in any program) goes through the protocol's
C{datagramReceived}, an adapter over the same L{ReplyPath}, sending with
C{transport.write}: replies, decisions and counters are the same on both.

Errors never escape a read: a failing socket call ends the batch or counts
a lost reply, and an exception out of C{decide} (a bug) is counted as an
internal error and logged at a bounded rate.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from itertools import repeat
from typing import Final

from twisted.internet import error
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger

from udptime import mmsg
from udptime.ancillary import (
    MSG_ERRQUEUE,
    SCM_TIMESTAMPING,
    SCM_TIMESTAMPNS,
    SO_TIMESTAMPNS,
    TIMESPEC,
    TIMESTAMP_SPACE,
    DestinationReports,
    destinationReports,
    enableTransmitTimestamps,
)
from udptime.clock import NTP_UNIX_OFFSET
from udptime.errorqueue import ErrorQueuePort
from udptime.interleave import TransmitTimes
from udptime.replies import ReplyPath
from udptime.sendstep import SendCall, compiledStep, unavailable
from udptime.server import UDPServerProtocol

_WILDCARDS: Final = frozenset({"0.0.0.0", "::"})

_Header = tuple[int, int, int, int]
"""
A receive slot's source address length, control length, flags and datagram
length, as the readers of L{mmsg.ReadPlan} give them.
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


_ERROR_QUEUE_SIZE: Final = 2048
"""Room for a reply the error queue gives back, with its headers."""
_ERROR_QUEUE_CONTROL: Final = 512
"""Room for the control messages that come with it."""


class ServerPort(ErrorQueuePort):
    """
    A UDP port that serves a L{UDPServerProtocol}: its L{reader} reads, the
    protocol decides, its L{replies} send and count.

    Create one over a bound socket with L{ServerPort.adopt}.

    @ivar kernelTimestamps: take each datagram's receive time from the
        kernel (C{SO_TIMESTAMPNS}).
    @ivar maxDatagramsPerRead: the bound on datagrams read per wake-up.
    @ivar destinations: how the socket reports the address each datagram
        reached, when each reply is sent from that address; L{None}
        otherwise.
    @ivar batch: the memory of batched system calls, or L{None} when the
        port reads one datagram per call.
    @ivar replies: the reply path: sends the replies and counts.
    @ivar reader: reads the waiting datagrams, in L{doRead}.
    @ivar transmitTimes: where the kernel transmit times of the replies
        sent with a request for them go (the protocol's
        L{interleave<udptime.server.UDPServerProtocol.interleave>}), or
        L{None} when the port reads none.
    @ivar quiet: whether the reactor stopped watching the socket for the
        rest of this read (see L{quieten}).
    """

    log = Logger()
    protocol: UDPServerProtocol
    kernelTimestamps = False
    maxDatagramsPerRead = MAX_DATAGRAMS_PER_READ
    destinations: DestinationReports | None = None
    batch: mmsg.MessageBatch | None = None
    replies: ReplyPath
    reader: Reader
    transmitTimes: TransmitTimes | None = None
    quiet = False

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
            port.destinations = destinationReports(sock.family)
        if batched is not False and mmsg.available():
            try:
                port.batch = mmsg.MessageBatch(
                    MAX_DATAGRAMS_PER_READ,
                    maxPacketSize,
                    sock.family,
                    kernelTimestamps,
                    port.destinations,
                )
            except (OSError, ValueError) as failure:
                cls.log.warn(
                    "{service}: no batched system calls, one datagram at a time: "
                    "{error}",
                    service=protocol.serviceName,
                    error=failure,
                )
        port.startListening()  # type: ignore[no-untyped-call]
        if protocol.kernelTransmitTimes:
            port.enableTransmitTimes()
        port.replies = ReplyPath(
            protocol,
            port.socket.sendto,
            port.socket.sendmsg,
            port.batch,
            port.sendStep(),
        )
        if port.transmitTimes is not None:
            port.replies.timestamping = port.quieten
        if port.batch is not None:
            port.reader = Batched(port, port.batch)
        elif port.destinations is not None or kernelTimestamps:
            port.reader = WithControl(port)
        else:
            port.reader = OneAtATime(port)
        return port

    @property
    def batched(self) -> bool:
        """
        Whether this port reads and answers datagrams in batches.
        """
        return self.batch is not None

    @property
    def replyFromDestination(self) -> bool:
        """
        Whether each reply leaves from the address its request reached.
        """
        return self.destinations is not None

    def _bindSocket(self) -> None:
        super()._bindSocket()  # type: ignore[no-untyped-call]
        if SO_TIMESTAMPNS is not None:
            self.socket.setsockopt(
                socket.SOL_SOCKET, SO_TIMESTAMPNS, int(self.kernelTimestamps)
            )
        reports = self.destinations
        if reports is not None:
            self.socket.setsockopt(reports.level, reports.option, 1)

    def sendStep(self) -> SendCall | None:
        """
        The compiled send step of this port's socket, for a protocol whose
        replies carry their send time and that allows it (see
        L{udptime.sendstep}), where it is built; L{None} otherwise.  Logs
        which step the protocol's replies take.
        """
        protocol = self.protocol
        if not protocol.transmitTimestamps:
            return None
        step = None
        if not protocol.compiledSend:
            reason = "the compiled one is turned off"
        else:
            step = compiledStep(self.socket)
            reason = unavailable() or "the socket is neither IPv4 nor IPv6"
        if step is None:
            self.log.info(
                "{service}: transmit timestamps read and replies sent in Python "
                "({reason})",
                service=protocol.serviceName,
                reason=reason,
            )
        else:
            self.log.info(
                "{service}: transmit timestamps read and replies sent by the "
                "compiled send step (udptime._sendstep)",
                service=protocol.serviceName,
            )
        return step

    def enableTransmitTimes(self) -> None:
        """
        Have the socket report the kernel transmit times of the replies sent
        with a request for them, and give the protocol a table for them; or
        log why it cannot.
        """
        try:
            enableTransmitTimestamps(self.socket)
        except OSError as failure:
            self.log.warn(
                "{service}: no kernel transmit timestamps, so no interleaved "
                "mode: {error}",
                service=self.protocol.serviceName,
                error=failure,
            )
            return
        times = self.protocol.interleave
        if times is None:
            times = self.protocol.interleave = TransmitTimes()
        self.transmitTimes = times

    def readErrorQueue(self) -> None:
        """
        Read the kernel transmit timestamps waiting on the socket's error
        queue, without waiting for any, into L{transmitTimes}: each comes
        with the reply it was taken for, whose receive timestamp names it.
        """
        times = self.transmitTimes
        assert times is not None
        times.awaiting = 0
        recvmsg = self.socket.recvmsg
        for _ in range(self.maxDatagramsPerRead):
            try:
                data, ancillary, _flags, _addr = recvmsg(
                    _ERROR_QUEUE_SIZE, _ERROR_QUEUE_CONTROL, MSG_ERRQUEUE
                )
            except BlockingIOError:
                return
            except OSError as failure:
                if self.readFailed(failure):
                    continue
                return
            for level, kind, payload in ancillary:
                if (
                    kind == SCM_TIMESTAMPING
                    and level == socket.SOL_SOCKET
                    and len(payload) >= TIMESPEC.size
                    and len(data) >= 16
                ):
                    seconds, nanoseconds = TIMESPEC.unpack_from(payload)
                    # The reply (48 bytes) ends the data: its receive
                    # timestamp is 16 bytes before the end.
                    times.transmitted(
                        data[-16:-8], ntpFromTimespec(seconds, nanoseconds)
                    )

    def quieten(self) -> None:
        """
        Have the reactor stop watching the socket until the read ends (see
        L{resume}): called before a reply that asks for its kernel
        transmit time is sent.

        The kernel reports that time on the socket's error queue, and wakes
        whatever watches the socket, while the reply is on its way: between
        the transmit timestamp and the reply's arrival.  A poll or select
        watches a socket only while it waits, but an epoll set (the
        reactor's, on Linux) watches it all the time, and its wake-up
        (about half a microsecond) would lengthen every interleaved
        client's measured return path by as much, and show as half that
        in its offset.
        """
        if not self.quiet:
            self.quiet = True
            self.stopReading()  # type: ignore[no-untyped-call]

    def resume(self) -> None:
        """
        Have the reactor watch the socket again, after L{quieten}: at the
        end of a read, once the kernel transmit times waiting were read
        (L{readErrorQueue}).
        """
        self.quiet = False
        self.startReading()  # type: ignore[no-untyped-call]

    def readErrorsLeft(self) -> bool:
        """
        Read the kernel transmit times left on the error queue after the
        reads that waited for them, when this port asked for any.
        """
        if self.transmitTimes is None:
            return False
        self.readErrorQueue()
        return True

    def doRead(self) -> None:
        """
        Answer the datagrams waiting on the socket, at most
        L{maxDatagramsPerRead} of them.
        """
        try:
            self.reader.read()
        finally:
            # Watched again even when a read failed half-way (a bug).
            if self.quiet:
                self.resume()

    def readFailed(self, failure: OSError) -> bool:
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


class Reader:
    """
    One way of reading a L{ServerPort}'s waiting datagrams: each is handed
    to the port's reply path (L{ReplyPath.handle}), and what was read is
    counted once per read (L{ReplyPath.tally}).

    @ivar port: the port read.
    """

    def __init__(self, port: ServerPort) -> None:
        self.port = port

    def read(self) -> None:
        """
        Read and answer the waiting datagrams, at most the port's
        C{maxDatagramsPerRead}.
        """
        raise NotImplementedError(type(self).__name__ + ".read")


class OneAtATime(Reader):
    """
    One C{recvfrom} per datagram; its receive time is the clock's reading.
    """

    def read(self) -> None:
        port = self.port
        recvfrom = port.socket.recvfrom
        size = port.maxPacketSize
        replies = port.replies
        handle = replies.handle
        clock = port.protocol.clock
        ipv6 = port.addressFamily == socket.AF_INET6
        read = answered = 0
        for _ in range(port.maxDatagramsPerRead):
            try:
                data, addr = recvfrom(size)
            except OSError as failure:
                if port.readFailed(failure):
                    continue
                break
            read += 1
            answered += handle(data, addr[:2] if ipv6 else addr, clock())
        replies.tally(read, answered)
        times = port.transmitTimes
        if times is not None and times.awaiting:
            port.readErrorQueue()
        if port.quiet:
            port.resume()


class WithControl(Reader):
    """
    One C{recvmsg} per datagram, with its control messages: its kernel
    receive timestamp, or the report of the address it reached (sent back
    with its reply), or both.
    """

    def read(self) -> None:
        port = self.port
        recvmsg = port.socket.recvmsg
        size = port.maxPacketSize
        replies = port.replies
        handle = replies.handle
        clock = port.protocol.clock
        unpack = TIMESPEC.unpack
        level, kind, room = -1, -1, 0
        destinations = port.destinations
        if destinations is not None:
            level, kind = destinations.level, destinations.kind
            room = destinations.space
        timestamps = port.kernelTimestamps
        if timestamps:
            room += TIMESTAMP_SPACE
        ipv6 = port.addressFamily == socket.AF_INET6
        read = answered = 0
        for _ in range(port.maxDatagramsPerRead):
            try:
                data, ancillary, _flags, addr = recvmsg(size, room)
            except OSError as failure:
                if port.readFailed(failure):
                    continue
                break
            read += 1
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
            answered += handle(data, addr[:2] if ipv6 else addr, received, reached)
        replies.tally(read, answered)
        times = port.transmitTimes
        if times is not None and times.awaiting:
            port.readErrorQueue()
        if port.quiet:
            port.resume()


class Batched(Reader):
    """
    C{recvmmsg} and C{sendmmsg} (L{udptime.mmsg}): a batch of datagrams per
    call, their replies queued and sent together (unless the protocol's
    replies carry their send time: then each goes out at once).

    @ivar batch: the batch's memory and calls.
    """

    def __init__(self, port: ServerPort, batch: mmsg.MessageBatch) -> None:
        super().__init__(port)
        self.batch = batch

    def read(self) -> None:
        port = self.port
        batch = self.batch
        fd = port.socket.fileno()
        replies = port.replies
        handle = replies.handle
        clock = port.protocol.clock
        queueing = replies.queueing
        # What the loop reads the batch with, taken once (a wake-up may
        # bring a single datagram): the headers, sources and control
        # messages of a batch are unpacked all at once, with iter_unpack,
        # one call each instead of one per datagram.
        plan = batch.readPlan
        eachHeader, firstHeader = plan.eachHeader, plan.firstHeader
        eachName, firstName = plan.eachName, plan.firstName
        eachTimestamp, firstTimestamp = plan.eachTimestamp, plan.firstTimestamp
        headers, names, controls = plan.headers, plan.names, plan.controls
        data, addresses, stride = plan.data, plan.addresses, plan.stride
        headerSize, nameSize = plan.headerSize, plan.nameSize
        controlSize, fullName = plan.controlSize, plan.nameLength
        timestamps = port.kernelTimestamps and controlSize
        level, kind = socket.SOL_SOCKET, SCM_TIMESTAMPNS
        destinations = port.destinations
        reporting = destinations is not None
        if destinations is not None:
            reachedLevel, reachedKind = destinations.level, destinations.kind
            reachedSize, reachedAt = destinations.size, batch.destinationAt
        read = answered = 0
        remaining = port.maxDatagramsPerRead
        while remaining > 0:
            wanted = min(remaining, batch.count)
            got = batch.receive(fd, wanted)
            if got <= 0:
                if got < 0 and port.readFailed(_osError(-got)):
                    continue
                break
            read += got
            # One receive time for the batch (the kernel's, when it gives
            # each datagram's): the time recvmmsg read them all.
            now = clock()
            rows: Iterable[tuple[int, _Header, tuple[bytes], _Timestamp | None]]
            batchQueueing = queueing
            if got == 1:
                # A lone datagram, as most wake-ups of a server that is not
                # flooded bring: its slot is read directly, which costs less
                # than making the iterators below, and its reply goes out at
                # once, as a sendmmsg of one reply costs more than a sendto.
                stamp = firstTimestamp(controls) if timestamps else None
                rows = ((0, firstHeader(headers), firstName(names), stamp),)
                batchQueueing = False
            else:
                stamps: Iterable[_Timestamp | None]
                if timestamps:
                    stamps = eachTimestamp(controls[: got * controlSize])
                else:
                    stamps = repeat(None, got)
                rows = zip(
                    range(got),
                    eachHeader(headers[: got * headerSize]),
                    eachName(names[: got * nameSize]),
                    stamps,
                    strict=True,
                )
            for index, header, (raw,), stamp in rows:
                nameLength, controlLength, _flags, length = header
                start = index * stride
                datagram = data[start : start + length]
                if stamp is None:
                    received = now
                else:
                    _, cmsgLevel, cmsgKind, seconds, nanoseconds = stamp
                    if (
                        controlLength == controlSize
                        and cmsgKind == kind
                        and cmsgLevel == level
                    ):
                        received = seconds + nanoseconds * 1e-9
                    else:
                        received = now
                if nameLength != fullName or controlLength != controlSize:
                    batch.restore(index, nameLength, controlLength)
                    raw = raw[:nameLength]
                addr = addresses.get(raw)
                if addr is None:
                    try:
                        addr = batch.convert(raw)
                    except OSError as failure:
                        read -= 1
                        self.unknownSource(failure)
                        continue
                # A datagram without the control messages asked for (no room
                # for them?) has its reply sent on its own, from the address
                # the kernel picks.
                if batchQueueing and controlLength == controlSize:
                    answered += handle(datagram, addr, received, None, index)
                elif reporting and controlLength == controlSize:
                    # Sent at once, with the destination's control message
                    # as received, without a copy.
                    at = index * controlSize + reachedAt
                    answered += handle(
                        datagram,
                        addr,
                        received,
                        ((reachedLevel, reachedKind, controls[at : at + reachedSize]),),
                    )
                else:
                    answered += handle(datagram, addr, received)
            if replies.held:
                # Decided now, while the batch's receive slots still hold
                # their sources (the next receive reuses them).
                answered += replies.decideHeld()
            if batch.queued:
                replies.sendQueued(fd)
            if got < wanted:
                break
            remaining -= got
        replies.tally(read, answered)
        times = port.transmitTimes
        if times is not None and times.awaiting:
            port.readErrorQueue()
        if port.quiet:
            port.resume()

    def unknownSource(self, failure: OSError) -> None:
        """
        Log a datagram dropped because its source address could not be
        read.
        """
        self.port.log.error(
            "{service}: dropped a datagram from an unreadable address: {error}",
            service=self.port.protocol.serviceName,
            error=failure,
        )


def ntpFromTimespec(seconds: int, nanoseconds: int) -> int:
    """
    The 64-bit NTP timestamp of a kernel C{timespec}, exactly (a float of
    the Unix time would lose its last quarter microsecond).
    """
    return ((seconds + NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32 | (
        (nanoseconds << 32) // 1_000_000_000
    )


def _osError(errno: int) -> OSError:
    """
    The L{OSError} (subclass) Python raises for C{errno}.
    """
    return OSError(errno, os.strerror(errno))
