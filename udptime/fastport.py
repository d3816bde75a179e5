"""
A UDP port specialised for udptime's request/response services.

L{ServerPort} is an ordinary Twisted L{udp.Port}, driven by the reactor like
any other, with a leaner read-answer-send path for servers:

  - it reads a bounded batch of datagrams per wake-up and hands each to
    L{UDPServerProtocol.handleDatagram} with its receive time, skipping
    C{datagramReceived} and a clock read in between;
  - with kernel receive timestamps on (C{SO_TIMESTAMPNS}), the receive
    time is the moment the kernel queued the datagram, read with C{recvmsg},
    instead of the moment the event loop got round to it;
  - a reply written to the address of the datagram being answered (the very
    tuple the kernel gave) goes straight to C{sendto}: the generic port
    checks on every write that the address is an IP address literal, which
    a kernel-supplied address always is.  Any other write takes the generic,
    checked path.

Replies and policy decisions are the protocol's, exactly as on the generic
port; only the plumbing differs.  Errors never escape a read: a failing
socket call ends the batch or counts a lost reply, and a bug in the protocol
is logged and counted, as C{udp.Port} does for C{datagramReceived}.
"""

from __future__ import annotations

import platform
import socket
import struct
import sys
from errno import EINTR, EMSGSIZE
from typing import Any, Final

from twisted.internet import error, udp
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger

from udptime.server import Address, UDPServerProtocol


def _timestampOption() -> int | None:
    """
    The value of C{SO_TIMESTAMPNS} on this system, or L{None} when it has
    none (Python only names the constant from 3.14 on).
    """
    option: int | None = getattr(socket, "SO_TIMESTAMPNS", None)
    if option is not None:
        return option
    if sys.platform != "linux":
        return None
    # asm-generic/socket.h: SO_TIMESTAMPNS_OLD, whose message carries a
    # native struct timespec; only a few architectures number it otherwise.
    if platform.machine().startswith(("sparc", "parisc", "alpha", "mips")):
        return None
    return 35


SO_TIMESTAMPNS: Final = _timestampOption()
"""The socket option for nanosecond receive timestamps (L{None}: none)."""

SCM_TIMESTAMPNS: Final = SO_TIMESTAMPNS
"""The control message that carries them (Linux numbers both alike)."""

_TIMESPEC: Final = struct.Struct("@ll")
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(_TIMESPEC.size)

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


def kernelTimestampsAvailable() -> bool:
    """
    Whether this system can give receive timestamps with C{SO_TIMESTAMPNS}.
    """
    return SO_TIMESTAMPNS is not None


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
    _answering: Address | None = None

    @classmethod
    def adopt(
        cls,
        reactor: IReactorFDSet,
        sock: socket.socket,
        protocol: UDPServerProtocol,
        maxPacketSize: int,
        kernelTimestamps: bool = False,
    ) -> ServerPort:
        """
        Serve C{protocol} on the bound, non-blocking UDP socket C{sock}, as
        C{reactor.adoptDatagramPort} does: the port works on a duplicate of
        the descriptor, and the caller still owns (and closes) C{sock}.

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
        port.startListening()  # type: ignore[no-untyped-call]
        return port

    def _bindSocket(self) -> None:
        super()._bindSocket()  # type: ignore[no-untyped-call]
        if SO_TIMESTAMPNS is not None:
            self.socket.setsockopt(
                socket.SOL_SOCKET, SO_TIMESTAMPNS, int(self.kernelTimestamps)
            )

    def doRead(self) -> None:
        """
        Answer the datagrams waiting on the socket, at most
        L{maxDatagramsPerRead} of them.
        """
        if self.kernelTimestamps:
            self._readTimestamped()
            return
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        protocol = self.protocol
        handle = protocol.handleDatagram
        clock = protocol.clock
        ipv6 = self.addressFamily == socket.AF_INET6
        for _ in range(self.maxDatagramsPerRead):
            try:
                data, addr = recvfrom(size)
            except OSError as failure:
                if self._readFailed(failure):
                    continue
                break
            if ipv6:
                addr = addr[:2]
            self._answering = addr
            try:
                handle(data, addr, clock())
            except BaseException:
                self._handlerFailed(data, addr)
        self._answering = None

    def _readTimestamped(self) -> None:
        # doRead's loop with recvmsg: kept as a loop of its own rather than a
        # test per datagram, as this is the path every request takes.
        recvmsg = self.socket.recvmsg
        size = self.maxPacketSize
        protocol = self.protocol
        handle = protocol.handleDatagram
        clock = protocol.clock
        unpack = _TIMESPEC.unpack
        level, kind = socket.SOL_SOCKET, SCM_TIMESTAMPNS
        ipv6 = self.addressFamily == socket.AF_INET6
        for _ in range(self.maxDatagramsPerRead):
            try:
                data, ancillary, _flags, addr = recvmsg(size, _ANCILLARY_SIZE)
            except OSError as failure:
                if self._readFailed(failure):
                    continue
                break
            if ancillary and ancillary[0][1] == kind and ancillary[0][0] == level:
                seconds, nanoseconds = unpack(ancillary[0][2])
                received = seconds + nanoseconds * 1e-9
            else:
                received = clock()
            if ipv6:
                addr = addr[:2]
            self._answering = addr
            try:
                handle(data, addr, received)
            except BaseException:
                self._handlerFailed(data, addr)
        self._answering = None

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
            "{service} failed on a {size}-byte datagram from {addr}",
            service=self.protocol.serviceName,
            size=len(data),
            addr=addr,
        )

    def write(self, datagram: bytes, addr: Any = None) -> None:
        """
        Send C{datagram} to C{addr}.  A reply to the datagram being answered
        goes straight out; any other write is checked as on the generic
        port.  Failures raise as on the generic port: L{OSError}, or
        L{error.MessageLengthError} for a datagram too long to send.
        """
        answering = self._answering
        if answering is not None and addr is answering:
            try:
                self.socket.sendto(datagram, answering)
            except OSError as failure:
                if failure.errno == EINTR:
                    self.write(datagram, answering)
                elif failure.errno == EMSGSIZE:
                    raise error.MessageLengthError("message too long") from None
                elif not isinstance(failure, ConnectionRefusedError):
                    raise
        else:
            super().write(datagram, addr)
