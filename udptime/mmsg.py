"""
Batched UDP system calls for L{udptime.port}: C{recvmmsg} and C{sendmmsg}
through C{ctypes}, on Linux.

A L{MessageBatch} owns preallocated memory for one batch: a receive slot per
datagram (the datagram, its source C{sockaddr} and, with kernel timestamps,
room for one C{SCM_TIMESTAMPNS} control message), and a send slot per reply
(a copy of the reply, and a header naming the source address of the datagram
it answers, so that the kernel's own C{sockaddr} is reused as the
destination).  The hot loop reads and writes that memory with precompiled
L{struct.Struct}s; C{ctypes} is used only to call the two functions and to
find the addresses of the buffers.

L{available} says whether this system has both functions; everything else
falls back to one C{recvfrom}/C{sendto} per datagram.
"""

from __future__ import annotations

import ctypes
import mmap
import socket
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Final, NamedTuple

from udptime.address import Address
from udptime.ancillary import TIMESTAMP_SPACE, DestinationReports

ADDRESS_CACHE_SIZE: Final = 4096
"""
Source addresses whose (host, port) tuple is kept, keyed by the raw
C{sockaddr}; the cache is emptied when full, so that a flood of new sources
costs one conversion each and bounded memory.
"""

SEND_SLOT_SIZE: Final = 2048
"""
Longest reply copied into a batch; a longer one is sent on its own (no
reply of udptime's services comes close).
"""


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_HEADER_SIZE: Final = ctypes.sizeof(_MMsgHdr)
_IOVEC_SIZE: Final = ctypes.sizeof(_IOVec)
_SOCKADDR_SIZE: Final = 28  # sizeof(struct sockaddr_in6) >= sockaddr_in's 16


def _fieldOffset(name: str) -> int:
    return int(getattr(_MsgHdr, name).offset)


def _layout(*fields: tuple[int, str]) -> struct.Struct:
    """
    A L{struct.Struct} reading or writing the given C{(offset, code)}
    fields (native sizes, in increasing offsets) and skipping the bytes in
    between.
    """
    parts = []
    position = 0
    for offset, code in fields:
        if offset > position:
            parts.append(f"{offset - position}x")
        parts.append(code)
        position = offset + struct.calcsize("=" + code)
    return struct.Struct("=" + "".join(parts))


_SIZE_T: Final = {4: "I", 8: "Q"}[ctypes.sizeof(ctypes.c_size_t)]
_POINTER: Final = {4: "I", 8: "Q"}[ctypes.sizeof(ctypes.c_void_p)]

# What the hot loop reads of a received header: the source address length,
# the control data length, the flags, the datagram length.
_RECEIVED: Final = _layout(
    (_fieldOffset("msg_namelen"), "I"),
    (_fieldOffset("msg_controllen"), _SIZE_T),
    (_fieldOffset("msg_flags"), "i"),
    (int(_MMsgHdr.msg_len.offset), "I"),
)
# The same for each header of a batch at once (iter_unpack): padded to a
# header's size.
_EACH_RECEIVED: Final = struct.Struct(
    _RECEIVED.format + f"{_HEADER_SIZE - _RECEIVED.size}x"
)
# Single fields, written at their own offsets (pack_into writes padding too).
_NAMELEN_AT: Final = _fieldOffset("msg_namelen")
_NAMELEN: Final = struct.Struct("=I")
_CONTROLLEN_AT: Final = _fieldOffset("msg_controllen")
_IOV_LEN_AT: Final = int(_IOVec.iov_len.offset)
_SIZE: Final = struct.Struct("=" + _SIZE_T)
# A send header's destination: the address and length of a source sockaddr.
_DESTINATION: Final = _layout(
    (_fieldOffset("msg_name"), _POINTER), (_fieldOffset("msg_namelen"), "I")
)
# A send header's control message address, written on its own: a layout
# spanning other fields would write zeros over those in between.
_CONTROL_AT: Final = _fieldOffset("msg_control")
_CONTROL: Final = struct.Struct("=" + _POINTER)
# struct cmsghdr followed by a struct timespec.
_TIMESTAMP_MESSAGE: Final = struct.Struct("@Niill")
if _TIMESTAMP_MESSAGE.size != TIMESTAMP_SPACE:  # pragma: no cover
    # Read one control slot after the other, each must be one message.
    raise ImportError("unexpected struct cmsghdr layout")

_PORT: Final = struct.Struct("!H")


def _loadFunctions() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """
    C{recvmmsg} and C{sendmmsg} from the C library, or L{None} where it has
    no such functions (or C{ctypes} cannot load it).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg = libc.recvmmsg
        sendmmsg = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    # No argtypes: converting the arguments through them costs about a
    # microsecond a call.  The callers pass what the C functions take as it
    # is: Python ints for the int and unsigned int arguments (ctypes passes
    # them as C ints), c_void_p objects made once for the pointers, None for
    # NULL.
    recvmmsg.restype = ctypes.c_int
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_FUNCTIONS: Final = _loadFunctions()


def available() -> bool:
    """
    Whether this system has C{recvmmsg} and C{sendmmsg} for L{MessageBatch}.
    """
    return _FUNCTIONS is not None


def _setHeader(
    headers: bytearray,
    iovecs: bytearray,
    iovecsAt: int,
    index: int,
    data: tuple[int, int],
    name: tuple[int, int],
    control: tuple[int, int],
) -> None:
    """
    Point message header C{index} of C{headers} at one buffer, described
    by iovec C{index} of C{iovecs} (whose memory is at C{iovecsAt}), and at
    a C{sockaddr} and control messages.

    @param data: the buffer's address and length.
    @param name: the C{sockaddr}'s address and length.
    @param control: the control messages' address and length (a length of
        0: none).
    """
    iovec = _IOVec.from_buffer(iovecs, index * _IOVEC_SIZE)
    iovec.iov_base, iovec.iov_len = data
    header = _MMsgHdr.from_buffer(headers, index * _HEADER_SIZE).msg_hdr
    header.msg_name, header.msg_namelen = name
    header.msg_iov = iovecsAt + index * _IOVEC_SIZE
    header.msg_iovlen = 1
    if control[1]:
        header.msg_control, header.msg_controllen = control


class ReadPlan(NamedTuple):
    """
    What a reader of a L{MessageBatch}'s datagrams needs, gathered once so
    that a read loop can take it into local variables: after
    L{MessageBatch.receive} returned C{n}, the first C{n} receive slots hold
    datagrams.  Each slot's header, source C{sockaddr} and control messages
    are read for all C{n} slots at once with the C{each*} readers
    (C{iter_unpack} over the first C{n * size} bytes of their buffer), or
    for the first slot alone with the C{first*} ones (C{unpack_from}).

    @ivar eachHeader: each slot's source address length, control length,
        flags and datagram length, over L{headers}.
    @ivar eachName: each slot's source C{sockaddr} (a 1-tuple of
        C{nameLength} bytes), over L{names}.
    @ivar eachTimestamp: each slot's timestamp message (its length, level,
        type, seconds and nanoseconds), over L{controls}.
    @ivar firstHeader: L{eachHeader}'s reading of the first slot.
    @ivar firstName: L{eachName}'s reading of the first slot.
    @ivar firstTimestamp: L{eachTimestamp}'s reading of the first slot.
    @ivar headers: the receive headers.
    @ivar names: the source addresses.
    @ivar controls: the control messages.
    @ivar data: the datagrams, slot C{i} at C{i * stride}.
    @ivar addresses: the cache of source addresses (see
        L{MessageBatch.convert}).
    @ivar headerSize: the size of a slot's header.
    @ivar nameSize: the size of a slot's source address room.
    @ivar controlSize: the size of a slot's control room: what a datagram
        with every control message asked for uses.
    @ivar nameLength: the length of a full source C{sockaddr} of the family.
    @ivar stride: the distance between two datagrams in L{data}.
    """

    eachHeader: Callable[[memoryview], Iterator[tuple[int, int, int, int]]]
    eachName: Callable[[memoryview], Iterator[tuple[bytes]]]
    eachTimestamp: Callable[[memoryview], Iterator[tuple[int, int, int, int, int]]]
    firstHeader: Callable[[memoryview], tuple[int, int, int, int]]
    firstName: Callable[[memoryview], tuple[bytes]]
    firstTimestamp: Callable[[memoryview], tuple[int, int, int, int, int]]
    headers: memoryview
    names: memoryview
    controls: memoryview
    data: mmap.mmap
    addresses: dict[bytes, Address]
    headerSize: int
    nameSize: int
    controlSize: int
    nameLength: int
    stride: int


class MessageBatch:
    """
    The memory and the calls for one port's batches: up to C{count}
    datagrams of up to C{size} bytes received with one C{recvmmsg}, and up
    to C{count} replies sent with one C{sendmmsg}.

    After L{receive} returned C{n}, datagram C{i < n} is described by its
    receive slot, which L{readPlan} says how to read (see L{ReadPlan}): its
    header, its bytes at C{i * stride} in L{data}, its source C{sockaddr},
    and its control messages at C{i * controlSize} in L{controls} (the
    kernel timestamp first, then the report of the address it reached,
    read with L{destination}: each when asked for).  L{queue} copies a
    reply for datagram C{i} into the next send slot, which sends it to the
    datagram's source (with its destination report, if any); L{send} sends
    the queued replies.

    @ivar count: datagrams per batch.
    @ivar size: the longest datagram received whole (longer ones are
        truncated to it, as C{recvfrom(size)} truncates).
    @ivar stride: the distance between two receive slots: C{size} rounded
        up to a page and one cache line more, so that the datagrams at the
        slots' starts do not all fall in the same cache sets.
    @ivar family: the socket's address family.
    @ivar timestamps: whether there is room for kernel timestamps.
    @ivar timestampSpace: the room for a kernel timestamp (0: none).
    @ivar destinations: how the socket reports the address each datagram
        reached, or L{None}.
    @ivar destinationSize: the size of a destination report's data.
    @ivar destinationSpace: the room for a destination report (0: none).
    @ivar controlSize: the control room of each slot.
    @ivar destinationAt: where in a slot the data of its destination
        message starts.
    @ivar eachTimestamp: reads the timestamp message of each slot, with
        C{iter_unpack} over the slots.
    @ivar nameLength: the length of a source C{sockaddr} of the family.
    @ivar eachName: reads the source C{sockaddr} of each slot, C{nameLength}
        bytes, with C{iter_unpack}.
    @ivar queued: replies queued since the last L{send}.
    @ivar data: the receive slots, an anonymous L{mmap.mmap}: a slice of it
        is a L{bytes} copy, made in one step.
    """

    def __init__(
        self,
        count: int,
        size: int,
        family: int,
        timestamps: bool,
        destinations: DestinationReports | None = None,
    ) -> None:
        """
        @param destinations: how the socket reports the address each
            datagram reached (C{IP_PKTINFO}, C{IPV6_PKTINFO}), when it does;
            L{None} when it does not.  Each reply is then sent with its
            request's report, so that it leaves from the address the
            request reached.
        @raise OSError: this system has no C{recvmmsg}/C{sendmmsg}.
        """
        if _FUNCTIONS is None:
            raise OSError("recvmmsg and sendmmsg are not available")
        self._recvmmsg, self._sendmmsg = _FUNCTIONS
        self.count = count
        self.size = size
        self.stride = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE + 64
        self.family = family
        self.timestamps = timestamps
        self.queued = 0
        self.nameLength = 28 if family == socket.AF_INET6 else 16
        self.eachName = struct.Struct(
            f"{self.nameLength}s{_SOCKADDR_SIZE - self.nameLength}x"
        )
        # A receive slot's control room: the timestamp's message first, as
        # the kernel writes them, then the destination's.
        self.timestampSpace = TIMESTAMP_SPACE if timestamps else 0
        self.destinations = destinations
        self.destinationSize = 0 if destinations is None else destinations.size
        self.destinationSpace = 0 if destinations is None else destinations.space
        self.controlSize = self.timestampSpace + self.destinationSpace
        # Where the destination message's data starts in a slot.
        self.destinationAt = self.timestampSpace + socket.CMSG_LEN(0)
        self.eachTimestamp = struct.Struct(
            _TIMESTAMP_MESSAGE.format + f"{self.destinationSpace}x"
        )
        # Received datagrams: pages the kernel never writes to are never
        # allocated, so room for 64 KiB datagrams costs little.
        self._dataMap = mmap.mmap(-1, count * self.stride)
        self.data = self._dataMap
        self.headers = bytearray(count * _HEADER_SIZE)
        self._iovecs = bytearray(count * _IOVEC_SIZE)
        self.names = bytearray(count * _SOCKADDR_SIZE)
        self.controls = bytearray(count * max(self.controlSize, TIMESTAMP_SPACE))
        self.sendHeaders = bytearray(count * _HEADER_SIZE)
        self._sendIovecs = bytearray(count * _IOVEC_SIZE)
        self._sendData = bytearray(count * SEND_SLOT_SIZE)
        self.sendData = memoryview(self._sendData)
        self._keep = [
            ctypes.c_char.from_buffer(buffer)
            for buffer in (
                self._dataMap,
                self.headers,
                self._iovecs,
                self.names,
                self.controls,
                self.sendHeaders,
                self._sendIovecs,
                self._sendData,
            )
        ]
        (
            dataAt,
            headersAt,
            iovecsAt,
            namesAt,
            controlsAt,
            sendAt,
            sendIovAt,
            sendDataAt,
        ) = (ctypes.addressof(view) for view in self._keep)
        self._headersPointer = ctypes.c_void_p(headersAt)
        self._sendHeaderPointers = [
            ctypes.c_void_p(sendAt + i * _HEADER_SIZE) for i in range(count)
        ]
        self.nameAddresses = [namesAt + i * _SOCKADDR_SIZE for i in range(count)]
        self.destinationAddresses = [
            controlsAt + i * self.controlSize + self.timestampSpace
            for i in range(count)
        ]
        for i in range(count):
            # A receive slot: room for a datagram, its source and its
            # control messages.
            _setHeader(
                self.headers,
                self._iovecs,
                iovecsAt,
                i,
                (dataAt + i * self.stride, size),
                (self.nameAddresses[i], self.nameLength),
                (controlsAt + i * self.controlSize, self.controlSize),
            )
            # A send slot: a reply, to the source of receive slot i (until
            # queue points it elsewhere), with its destination report.
            _setHeader(
                self.sendHeaders,
                self._sendIovecs,
                sendIovAt,
                i,
                (sendDataAt + i * SEND_SLOT_SIZE, 0),
                (self.nameAddresses[i], self.nameLength),
                (self.destinationAddresses[i], self.destinationSpace),
            )
        self._redirected = [False] * count
        self.addresses: dict[bytes, Address] = {}
        self.readPlan: Final = ReadPlan(
            eachHeader=_EACH_RECEIVED.iter_unpack,
            eachName=self.eachName.iter_unpack,
            eachTimestamp=self.eachTimestamp.iter_unpack,
            firstHeader=_RECEIVED.unpack_from,
            firstName=self.eachName.unpack_from,
            firstTimestamp=self.eachTimestamp.unpack_from,
            headers=memoryview(self.headers),
            names=memoryview(self.names),
            controls=memoryview(self.controls),
            data=self.data,
            addresses=self.addresses,
            headerSize=_HEADER_SIZE,
            nameSize=_SOCKADDR_SIZE,
            controlSize=self.controlSize,
            nameLength=self.nameLength,
            stride=self.stride,
        )
        """What a reader of this batch's datagrams needs (see L{ReadPlan})."""
        self._destination = _DESTINATION.pack_into
        self._size = _SIZE.pack_into

    def receive(self, fd: int, count: int) -> int:
        """
        Receive up to C{count} datagrams without blocking: how many were
        received, or C{-errno} when none was.
        """
        got: int = self._recvmmsg(
            fd, self._headersPointer, count, socket.MSG_DONTWAIT, None
        )
        if got < 0:
            return -ctypes.get_errno()
        return got

    def restore(self, index: int, nameLength: int, controlLength: int) -> None:
        """
        Give receive slot C{index} back its full address and control room,
        after the kernel shrank them to what datagram C{index} used.
        """
        offset = index * _HEADER_SIZE
        if nameLength != self.nameLength:
            _NAMELEN.pack_into(self.headers, offset + _NAMELEN_AT, self.nameLength)
        if controlLength != self.controlSize:
            _SIZE.pack_into(self.headers, offset + _CONTROLLEN_AT, self.controlSize)
            if self.destinationSpace:
                # The slot's destination message, if any, is an earlier
                # datagram's: not this one's (see destination).
                start = index * self.controlSize + self.timestampSpace
                _SIZE.pack_into(self.controls, start, 0)

    def convert(self, raw: bytes) -> Address:
        """
        The (host, port) of the source C{sockaddr} C{raw}, as C{recvfrom}
        would give it, kept in L{addresses}.

        @raise OSError: C{raw} is not an IPv4 or IPv6 address.
        """
        family = int.from_bytes(raw[:2], sys.byteorder)
        (port,) = _PORT.unpack_from(raw, 2)
        if family == socket.AF_INET6:
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            scope = int.from_bytes(raw[24:28], sys.byteorder)
            if scope:
                # As CPython's recvfrom shows it (getnameinfo adds the zone).
                host = socket.getnameinfo(
                    (host, port, 0, scope),
                    socket.NI_NUMERICHOST | socket.NI_NUMERICSERV,
                )[0]
        elif family == socket.AF_INET:
            host = socket.inet_ntop(socket.AF_INET, raw[4:8])
        else:
            raise OSError(f"unexpected address family {family}")
        addresses = self.addresses
        if len(addresses) >= ADDRESS_CACHE_SIZE:
            addresses.clear()
        addr = addresses[raw] = (host, port)
        return addr

    def queue(self, reply: bytes, index: int) -> bool:
        """
        Queue C{reply} to the source of datagram C{index}; whether it was
        queued (L{False}: the reply is too long for a send slot, or every
        slot is taken).
        """
        slot = self.queued
        size = len(reply)
        if size > SEND_SLOT_SIZE or slot >= self.count:
            return False
        start = slot * SEND_SLOT_SIZE
        self.sendData[start : start + size] = reply
        self._size(self._sendIovecs, slot * _IOVEC_SIZE + _IOV_LEN_AT, size)
        if slot != index:
            self._point(slot, index)
            self._redirected[slot] = True
        elif self._redirected[slot]:
            # The slot named another datagram's source in an earlier batch.
            self._point(slot, slot)
            self._redirected[slot] = False
        self.queued = slot + 1
        return True

    def queueAll(
        self, replies: Sequence[object], indices: Sequence[int | None]
    ) -> list[int]:
        """
        Queue, in order, each of C{replies} that is a reply's bytes to the
        source of the datagram its index in C{indices} names, as L{queue}
        does for one: the positions of those not queued (not bytes, no
        index, too long for a send slot, or every slot taken).
        """
        left: list[int] = []
        slot = self.queued
        count = self.count
        sendData = self.sendData
        setSize = self._size
        iovecs = self._sendIovecs
        redirected = self._redirected
        for position, (reply, index) in enumerate(zip(replies, indices, strict=True)):
            if (
                reply.__class__ is not bytes
                or index is None
                or slot >= count
                or len(reply) > SEND_SLOT_SIZE
            ):
                left.append(position)
                continue
            start = slot * SEND_SLOT_SIZE
            size = len(reply)
            sendData[start : start + size] = reply
            setSize(iovecs, slot * _IOVEC_SIZE + _IOV_LEN_AT, size)
            if slot != index:
                self._point(slot, index)
                redirected[slot] = True
            elif redirected[slot]:
                self._point(slot, slot)
                redirected[slot] = False
            slot += 1
        self.queued = slot
        return left

    def _point(self, slot: int, index: int) -> None:
        """
        Make send slot C{slot} send to the source of datagram C{index} (and
        with its destination's control message, when there is one).
        """
        offset = slot * _HEADER_SIZE
        self._destination(
            self.sendHeaders, offset, self.nameAddresses[index], self.nameLength
        )
        if self.destinationSpace:
            _CONTROL.pack_into(
                self.sendHeaders,
                offset + _CONTROL_AT,
                self.destinationAddresses[index],
            )

    def destination(self, index: int) -> bytes | None:
        """
        The data of datagram C{index}'s destination control message (see
        C{destinationSize}), as it was received; L{None} when the kernel
        gave none for it.
        """
        start = index * self.controlSize + self.timestampSpace
        length = _SIZE.unpack_from(self.controls, start)[0]
        if length != socket.CMSG_LEN(self.destinationSize):
            return None
        data = index * self.controlSize + self.destinationAt
        return bytes(self.controls[data : data + self.destinationSize])

    def ancillary(self, index: int) -> list[tuple[int, int, bytes]] | None:
        """
        The control messages that make a reply to datagram C{index}, sent on
        its own, leave from the address the datagram reached (its
        L{destination} report), or L{None} when there is none.
        """
        reports = self.destinations
        reached = None if reports is None else self.destination(index)
        if reports is None or reached is None:
            return None
        return [(reports.level, reports.kind, reached)]

    def send(self, fd: int, start: int) -> int:
        """
        Send the queued replies from slot C{start} on: how many were sent
        (at least one), or C{-errno} when the first of them was not.
        """
        sent: int = self._sendmmsg(
            fd, self._sendHeaderPointers[start], self.queued - start, 0
        )
        if sent < 0:
            return -ctypes.get_errno()
        return sent
