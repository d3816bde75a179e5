"""
Shared test support for Roughtime: keys, delegations, synchronised clock
states, a response built by hand (to give the verifier what no correct
server sends), byte flips at a named field of a response, and a UDP proxy
that alters responses in flight.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase

from udptime import roughtime as rt
from udptime.clock import ClockState, Leap
from udptime.roughtimekeys import writeNewKey

NOW = 1_800_000_000.25
"""A fixed time of processing for unit tests."""


def seededKey(n: int) -> Ed25519PrivateKey:
    """
    A deterministic Ed25519 key (tests only).
    """
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def publicBytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def synchronised(
    dispersion: float = 0.0, delay: float = 0.0, leap: Leap = Leap.NONE
) -> ClockState:
    """
    A synchronised clock state, as a local stratum gives.
    """
    return ClockState(
        leap=leap,
        synchronised=True,
        stratum=1,
        refid=b"LOCL",
        rootDelay=delay,
        rootDispersion=dispersion,
        referenceTime=NOW,
        precision=-20,
    )


def unsynchronised() -> ClockState:
    return ClockState(
        leap=Leap.NONE,
        synchronised=False,
        stratum=16,
        refid=b"\0\0\0\0",
        rootDelay=0.0,
        rootDispersion=16.0,
        referenceTime=None,
        precision=-20,
    )


def delegationAround(
    now: float, longTerm: int = 1, online: int = 2, span: int = 86400
) -> rt.Delegation:
    """
    A delegation of seeded keys covering C{now} +- C{span}.
    """
    return rt.makeDelegation(
        seededKey(longTerm), seededKey(online), int(now) - span, int(now) + span
    )


@dataclass
class HandResponse:
    """
    The parts of a response built by hand; L{build} signs and frames them.
    Every field can be made wrong on purpose.
    """

    request: rt.ClientRequest
    longTerm: Ed25519PrivateKey
    online: Ed25519PrivateKey
    version: int = rt.VERSION_1
    midpoint: int = int(NOW)
    radius: int = 3
    minTime: int = int(NOW) - 3600
    maxTime: int = int(NOW) + 3600
    responseContext: bytes | None = None
    delegationContext: bytes | None = None
    served: tuple[int, ...] | None = None
    topExtra: Mapping[int, bytes] | None = None
    srepExtra: Mapping[int, bytes] | None = None
    drop: tuple[int, ...] = ()
    srepDrop: tuple[int, ...] = ()
    typeValue: int = rt.TYPE_RESPONSE
    leafOverride: bytes | None = None

    def build(self) -> bytes:
        version = rt.VERSIONS.get(self.version, rt.RFC_10049)
        leaf = self.leafOverride or version.leaf(
            self.request.packet, self.request.nonce
        )
        dele = rt.encodeMessage(
            {
                rt.PUBK: publicBytes(self.online),
                rt.MINT: struct.pack("<Q", self.minTime),
                rt.MAXT: struct.pack("<Q", self.maxTime),
            }
        )
        delegationContext = self.delegationContext or version.delegationContext
        certificate = rt.encodeMessage(
            {rt.SIG: self.longTerm.sign(delegationContext + dele), rt.DELE: dele}
        )
        srep = {
            rt.RADI: struct.pack("<I", self.radius),
            rt.MIDP: struct.pack("<Q", self.midpoint),
            rt.ROOT: leaf,
        }
        top: dict[int, bytes] = {}
        if version.signedVersion:
            srep[rt.VER] = struct.pack("<I", self.version)
            srep[rt.VERS] = rt.packVersions(self.served or rt.SERVER_VERSIONS)
            top[rt.TYPE] = struct.pack("<I", self.typeValue)
        else:
            top[rt.VER] = struct.pack("<I", self.version)
        srep.update(self.srepExtra or {})
        for name in self.srepDrop:
            srep.pop(name, None)
        srepValue = rt.encodeMessage(srep)
        responseContext = self.responseContext or version.responseContext
        top.update(
            {
                rt.SIG: self.online.sign(responseContext + srepValue),
                rt.NONC: self.request.nonce,
                rt.PATH: b"",
                rt.SREP: srepValue,
                rt.CERT: certificate,
                rt.INDX: struct.pack("<I", 0),
            }
        )
        top.update(self.topExtra or {})
        for name in self.drop:
            top.pop(name, None)
        return rt.framePacket(rt.encodeMessage(top))


def valueOffset(packet: bytes, path: tuple[int, ...]) -> int:
    """
    Where in C{packet} (a response) the value reached by the tags of
    C{path} starts: C{(SIG,)}, C{(SREP, MIDP)}, C{(CERT, DELE, MINT)}.
    """
    start = rt.FRAME_SIZE
    data = packet[start:]
    for name in path:
        fields = rt._fields(data, 0, len(data))
        first, past = fields[name]
        start += first
        data = data[first:past]
    return start


def flipped(packet: bytes, path: tuple[int, ...], bit: int = 0) -> bytes:
    """
    C{packet} with bit C{bit} of the first byte of a value flipped.
    """
    at = valueOffset(packet, path)
    altered = bytearray(packet)
    altered[at] ^= 1 << bit
    return bytes(altered)


class TamperingProxy(DatagramProtocol):
    """
    A UDP proxy: datagrams from a client go to C{server}; the server's
    answers go back to the client, changed by C{tamper} on the way.

    @ivar forwarded: responses passed back.
    """

    noisy = False

    def __init__(
        self, server: tuple[str, int], tamper: Callable[[bytes], bytes]
    ) -> None:
        self.server = server
        self.tamper = tamper
        self.client: Any = None
        self.forwarded = 0

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        assert self.transport is not None
        if addr[:2] == self.server:
            if self.client is not None:
                self.forwarded += 1
                self.transport.write(self.tamper(datagram), self.client)
        else:
            self.client = addr
            self.transport.write(datagram, self.server)


def newKeyFile(test: SynchronousTestCase) -> tuple[str, Ed25519PrivateKey]:
    """
    A new long-term key file in a directory removed when C{test} ends: its
    path and key.
    """
    directory = tempfile.mkdtemp(prefix="udptime-roughtime-")
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    path = os.path.join(directory, "roughtime.key")
    return path, writeNewKey(path)
