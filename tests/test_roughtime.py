"""
Tests for L{udptime.roughtime}: the message format and packet framing,
version negotiation, request parsing, batch signing and the Merkle tree,
the radius, and response verification with one error per failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.roughtimesupport import (
    NOW,
    HandResponse,
    delegationAround,
    flipped,
    publicBytes,
    seededKey,
    synchronised,
    unsynchronised,
)
from udptime import roughtime as rt
from udptime.clock import Leap

LONG_TERM = seededKey(1)
PUBLIC = publicBytes(LONG_TERM)
PROPERTY = settings(max_examples=150, deadline=None)


class TagTests(SynchronousTestCase):
    def test_registryValues(self) -> None:
        """
        Tags are letters padded with zero bytes, read as a little-endian
        uint32: the values of IANA's registry.
        """
        registry = {
            "SIG": 0x00474953,
            "VER": 0x00524556,
            "SRV": 0x00565253,
            "NONC": 0x434E4F4E,
            "DELE": 0x454C4544,
            "TYPE": 0x45505954,
            "PATH": 0x48544150,
            "RADI": 0x49444152,
            "PUBK": 0x4B425550,
            "MIDP": 0x5044494D,
            "SREP": 0x50455253,
            "VERS": 0x53524556,
            "MINT": 0x544E494D,
            "ROOT": 0x544F4F52,
            "CERT": 0x54524543,
            "MAXT": 0x5458414D,
            "INDX": 0x58444E49,
            "ZZZZ": 0x5A5A5A5A,
        }
        for name, value in registry.items():
            self.assertEqual(rt.tag(name), value, name)
            self.assertEqual(rt.tagName(value), name)
        self.assertEqual(rt.REGISTERED_TAGS, frozenset(registry.values()))
        self.assertEqual(struct.pack("<I", rt.VER), b"VER\0")

    def test_badNames(self) -> None:
        for name in ("", "nonc", "ABCDE", "A1", "PAD\xff", "É"):
            self.assertRaises(ValueError, rt.tag, name)

    def test_nameOfOddTag(self) -> None:
        self.assertEqual(rt.tagName(0xFF444150), "0xff444150")
        self.assertEqual(rt.tagName(0), "0x00000000")


class MessageTests(SynchronousTestCase):
    def test_layout(self) -> None:
        """
        A message is the tag count, the offsets of all values but the
        first, the tags in ascending order, then the values.
        """
        message = rt.encodeMessage({rt.NONC: b"n" * 8, rt.VER: b"\1\0\0\0"})
        self.assertEqual(
            message,
            struct.pack("<3I", 2, 4, rt.VER)
            + struct.pack("<I", rt.NONC)
            + b"\1\0\0\0"
            + b"n" * 8,
        )
        self.assertEqual(
            rt.decodeMessage(message), {rt.VER: b"\1\0\0\0", rt.NONC: b"n" * 8}
        )

    def test_emptyValues(self) -> None:
        message = rt.encodeMessage([(rt.PATH, b""), (rt.SIG, b""), (rt.INDX, b"abcd")])
        self.assertEqual(
            rt.decodeMessage(message), {rt.SIG: b"", rt.PATH: b"", rt.INDX: b"abcd"}
        )

    def test_encodeRefuses(self) -> None:
        self.assertRaises(ValueError, rt.encodeMessage, {})
        self.assertRaises(ValueError, rt.encodeMessage, {rt.SIG: b"abc"})
        self.assertRaises(ValueError, rt.encodeMessage, [(rt.SIG, b""), (rt.SIG, b"")])
        self.assertRaises(ValueError, rt.encodeMessage, [(1 << 32, b"")])

    def test_decodeRefuses(self) -> None:
        """
        Every breach of the format is refused: no tags, too short for its
        header, a length not a multiple of 4, offsets not multiples of 4,
        going back or past the end, tags out of order or repeated.
        """
        good = rt.encodeMessage({rt.VER: b"\1\0\0\0", rt.NONC: bytes(32)})
        cases = {
            "empty": b"",
            "no tags": struct.pack("<I", 0),
            "header past end": struct.pack("<I", 3) + bytes(12),
            "odd length": good + b"\0",
            "offset not aligned": struct.pack("<4I", 2, 2, rt.VER, rt.NONC) + bytes(36),
            "offset past end": struct.pack("<4I", 2, 40, rt.VER, rt.NONC) + bytes(36),
            "offsets back": struct.pack("<6I", 3, 8, 4, rt.VER, rt.NONC, rt.TYPE)
            + bytes(12),
            "tags descending": struct.pack("<4I", 2, 4, rt.NONC, rt.VER) + bytes(36),
            "tag repeated": struct.pack("<4I", 2, 4, rt.VER, rt.VER) + bytes(36),
            "huge count": struct.pack("<I", 0xFFFFFFFF) + bytes(60),
        }
        for name, data in cases.items():
            with self.subTest(name):
                self.assertRaises(rt.MessageFormatError, rt.decodeMessage, data)

    @PROPERTY
    @given(
        st.dictionaries(
            st.integers(0, 0xFFFFFFFF),
            st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4]),
            min_size=1,
            max_size=12,
        )
    )
    def test_roundTrip(self, pairs: dict[int, bytes]) -> None:
        self.assertEqual(rt.decodeMessage(rt.encodeMessage(pairs)), pairs)

    @PROPERTY
    @given(st.binary(max_size=300))
    def test_decodeNeverFailsOtherwise(self, data: bytes) -> None:
        """
        Arbitrary bytes decode or raise L{MessageFormatError}, nothing else.
        """
        try:
            fields = rt.decodeMessage(data)
        except rt.MessageFormatError:
            return
        self.assertEqual(rt.decodeMessage(rt.encodeMessage(fields)), fields)


class FramingTests(SynchronousTestCase):
    def test_frame(self) -> None:
        message = rt.encodeMessage({rt.NONC: bytes(32)})
        packet = rt.framePacket(message)
        self.assertEqual(packet[:8], b"ROUGHTIM")
        self.assertEqual(struct.unpack("<Q", packet[:8])[0], 0x4D49544847554F52)
        self.assertEqual(struct.unpack("<I", packet[8:12])[0], len(message))
        self.assertEqual(rt.unframePacket(packet), message)

    def test_unframeRefuses(self) -> None:
        packet = rt.framePacket(rt.encodeMessage({rt.NONC: bytes(32)}))
        for bad in (
            packet[:11],
            b"ROUGHTIN" + packet[8:],
            packet + b"\0\0\0\0",
            packet[:-4],
        ):
            self.assertRaises(rt.MessageFormatError, rt.unframePacket, bad)


class VersionTests(SynchronousTestCase):
    def test_spoken(self) -> None:
        """
        RFC 10049's version 1, drafts 12 to 19's 0x8000000c and drafts 8
        to 11; VERS lists them ascending.
        """
        self.assertEqual(
            rt.SERVER_VERSIONS,
            (1, 0x80000008, 0x80000009, 0x8000000A, 0x8000000B, 0x8000000C),
        )

    def test_choice(self) -> None:
        cases = [
            ((1,), 1),
            ((1, 0x8000000C), 1),
            ((0x80000007, 0x8000000C, 0x8000000F), 0x8000000C),
            ((0x8000000B, 0x80000008), 0x8000000B),  # Cloudflare's order
            ((0x8000000E,), None),
            ((0, 2, 0x80000007), None),
        ]
        for offered, expected in cases:
            chosen = rt.chooseVersion(offered)
            self.assertEqual(
                None if chosen is None else chosen.number, expected, offered
            )

    def test_contexts(self) -> None:
        """
        The RFC's context strings are "Roughtime"; the drafts' were
        "RoughTime", drafts 8 to 11 ending the delegation's in "--"; each
        has its terminating zero byte.
        """
        self.assertEqual(
            rt.RFC_10049.responseContext, b"Roughtime v1 response signature\0"
        )
        self.assertEqual(
            rt.RFC_10049.delegationContext, b"Roughtime v1 delegation signature\0"
        )
        draft = rt.VERSIONS[0x8000000C]
        self.assertEqual(draft.responseContext, b"RoughTime v1 response signature\0")
        self.assertEqual(
            draft.delegationContext, b"RoughTime v1 delegation signature\0"
        )
        old = rt.VERSIONS[0x8000000B]
        self.assertEqual(
            old.delegationContext, b"RoughTime v1 delegation signature--\0"
        )
        self.assertFalse(old.leafFromRequest)

    def test_names(self) -> None:
        self.assertEqual(rt.versionName(1), "RFC 10049")
        self.assertEqual(rt.versionName(0x8000000B), "draft 11")
        self.assertEqual(rt.versionName(0x8000000E), "0x8000000e")


def request(
    versions: tuple[int, ...] = (1,),
    publicKey: bytes | None = PUBLIC,
    size: int = rt.REQUEST_SIZE,
    extra: dict[int, bytes] | None = None,
    drop: tuple[int, ...] = (),
    nonce: bytes = b"N" * 32,
) -> bytes:
    """
    A request packet with C{extra} tags added (or replaced) and C{drop}
    left out, padded to C{size}.
    """
    fields = {rt.VER: rt.packVersions(versions), rt.NONC: nonce, rt.TYPE: bytes(4)}
    if publicKey is not None:
        fields[rt.SRV] = rt.srvValue(publicKey)
    fields.update(extra or {})
    for name in drop:
        fields.pop(name, None)
    fields[rt.ZZZZ] = b""
    fields[rt.ZZZZ] = bytes(size - rt.FRAME_SIZE - len(rt.encodeMessage(fields)))
    return rt.framePacket(rt.encodeMessage(fields))


class ParseRequestTests(SynchronousTestCase):
    srv = rt.srvValue(PUBLIC)

    def test_accepted(self) -> None:
        packet = request()
        parsed = rt.parseRequest(packet, self.srv)
        assert isinstance(parsed, rt.Request)
        self.assertEqual(parsed.nonce, b"N" * 32)
        self.assertIs(parsed.version, rt.RFC_10049)
        self.assertEqual(parsed.packet, packet)

    def test_drops(self) -> None:
        """
        Each reason to drop a request, as RFC 10049 §5.1 and §5.2 give them.
        """
        unsorted = rt.packVersions((0x8000000C, 1))
        D = rt.DropReason
        cases = {
            "1023 bytes": (request()[:1023], D.SHORT),
            "empty": (b"", D.SHORT),
            "not framed": (bytes(1024), D.MALFORMED),
            "bad length field": (
                request()[:8] + b"\0\0\0\0" + request()[12:],
                D.MALFORMED,
            ),
            "no VER": (request(drop=(rt.VER,)), D.MALFORMED),
            "no NONC": (request(drop=(rt.NONC,)), D.MALFORMED),
            "short NONC": (request(nonce=b"n" * 28), D.MALFORMED),
            "VER not uint32s": (request(extra={rt.VER: b""}), D.MALFORMED),
            "33 versions": (request(versions=tuple(range(1, 34))), D.MALFORMED),
            "VER unsorted": (request(extra={rt.VER: unsorted}), D.MALFORMED),
            "no TYPE, version 1": (request(drop=(rt.TYPE,)), D.MALFORMED),
            "TYPE 1": (request(extra={rt.TYPE: b"\1\0\0\0"}), D.MALFORMED),
            "TYPE too long": (request(extra={rt.TYPE: bytes(8)}), D.MALFORMED),
            "no common version": (request(versions=(2, 0x8000000E)), D.VERSION),
            "another server": (request(publicKey=publicBytes(seededKey(9))), D.SERVER),
        }
        for name, (packet, reason) in cases.items():
            with self.subTest(name):
                self.assertEqual(rt.parseRequest(packet, self.srv), reason)

    def test_lenientDrafts(self) -> None:
        """
        Drafts 12 and 13 had no TYPE, so 0x8000000c requests may leave it
        out; drafts 8 to 11 need no sorted VER, nor SRV; unknown tags and
        odd padding tags (Google's PAD\\xff) are ignored; a 1024-byte packet
        (as Cloudflare's and roughly's clients send) is enough.
        """
        cases = [
            request(versions=(0x8000000C,), drop=(rt.TYPE,)),
            request(extra={rt.VER: rt.packVersions((0x8000000B, 0x80000008))}),
            request(versions=(0x8000000B,), publicKey=None),
            request(extra={0xFF444150: bytes(8), rt.tag("ABCD"): b"xyzw"}),
            request(size=1024),
        ]
        for packet in cases:
            self.assertIsInstance(rt.parseRequest(packet, self.srv), rt.Request)

    @PROPERTY
    @given(st.binary(min_size=1000, max_size=1100))
    def test_neverRaises(self, data: bytes) -> None:
        result = rt.parseRequest(data, self.srv)
        self.assertIsInstance(result, (rt.Request, rt.DropReason))

    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.integers(0, rt.REQUEST_SIZE - 1), st.integers(0, 255))
    def test_mutationsNeverRaise(self, position: int, value: int) -> None:
        packet = bytearray(request())
        packet[position] = value
        result = rt.parseRequest(bytes(packet), self.srv)
        self.assertIsInstance(result, (rt.Request, rt.DropReason))


class MerkleTests(SynchronousTestCase):
    def leaves(self, n: int) -> list[bytes]:
        return [hashlib.sha512(bytes([i])).digest()[:32] for i in range(n)]

    def test_twoLeaves(self) -> None:
        a, b = self.leaves(2)
        levels = rt.merkleLevels([a, b])
        root = hashlib.sha512(b"\x01" + a + b).digest()[:32]
        self.assertEqual(levels[-1], [root])
        self.assertEqual(rt.merklePath(levels, 0), b)
        self.assertEqual(rt.merklePath(levels, 1), a)
        self.assertEqual(rt.merkleRoot(a, 0, b), root)
        self.assertEqual(rt.merkleRoot(b, 1, a), root)
        self.assertNotEqual(rt.merkleRoot(a, 1, b), root)

    def test_singleLeaf(self) -> None:
        (leaf,) = self.leaves(1)
        levels = rt.merkleLevels([leaf])
        self.assertEqual(levels, [[leaf]])
        self.assertEqual(rt.merklePath(levels, 0), b"")
        self.assertEqual(rt.merkleRoot(leaf, 0, b""), leaf)

    def test_everyLeafReachesRoot(self) -> None:
        """
        In trees of 1 to 33 leaves (padded to powers of two), every leaf's
        path leads to the root, and to nothing else from another index.
        """
        for n in range(1, 34):
            leaves = self.leaves(n)
            levels = rt.merkleLevels(leaves)
            root = levels[-1][0]
            for index, leaf in enumerate(leaves):
                path = rt.merklePath(levels, index)
                self.assertEqual(len(path), 32 * (len(levels) - 1))
                self.assertEqual(rt.merkleRoot(leaf, index, path), root, (n, index))
                if path[:32] != leaf:  # not paired with its own padding copy
                    self.assertNotEqual(rt.merkleRoot(leaf, index ^ 1, path), root)

    def test_allPaths(self) -> None:
        """
        L{rt.merklePaths} gives the first leaves' paths, each as
        L{rt.merklePath} gives it, in trees of 1 to 33 leaves; a tree
        padded with the last leaf's copies has the same levels as one
        padded with equal leaves that are other objects.
        """
        for n in range(1, 34):
            leaves = self.leaves(n)
            levels = rt.merkleLevels(leaves)
            paths = rt.merklePaths(levels, n)
            self.assertEqual(len(paths), n)
            for index in range(n):
                self.assertEqual(paths[index], rt.merklePath(levels, index))
            copies = [bytes(bytearray(leaves[-1])) for _ in range(len(levels[0]) - n)]
            self.assertEqual(rt.merkleLevels(leaves + copies), levels)

    def test_extraIndexBits(self) -> None:
        """
        INDX bits beyond the path's length fail the check (§5.3.1).
        """
        a, b = self.leaves(2)
        self.assertIsNone(rt.merkleRoot(a, 2, b))
        self.assertIsNone(rt.merkleRoot(a, 1 << 31, b""))

    def test_noLeaves(self) -> None:
        self.assertRaises(ValueError, rt.merkleLevels, [])


class RadiusTests(SynchronousTestCase):
    def test_unsynchronised(self) -> None:
        """
        An unsynchronised clock gets no radius: the server does not answer.
        """
        self.assertIsNone(rt.radiusFor(unsynchronised()))

    def test_table(self) -> None:
        cases = [
            (synchronised(), 3),
            (synchronised(dispersion=2.4), 3),
            (synchronised(dispersion=2.5), 4),
            (synchronised(dispersion=3.2, delay=1.0), 5),
            (synchronised(dispersion=15.0), 16),
            (synchronised(leap=Leap.INSERT), 3),
            (synchronised(dispersion=2.0, leap=Leap.DELETE), 4),
            (synchronised(dispersion=1e12), 0xFFFFFFFF),
        ]
        for state, expected in cases:
            self.assertEqual(rt.radiusFor(state), expected, state)
        self.assertEqual(rt.radiusFor(synchronised(), floor=1), 1)
        self.assertEqual(rt.radiusFor(synchronised(dispersion=0.6), floor=1), 2)
        self.assertRaises(ValueError, rt.radiusFor, synchronised(), 0)

    def test_strictBound(self) -> None:
        """
        The true time is strictly inside (MIDP - RADI, MIDP + RADI): the
        rounding to MIDP plus the clock's error stays below the radius.
        """
        for dispersion in (0.0, 0.25, 0.5, 1.0, 2.5, 7.49):
            radius = rt.radiusFor(synchronised(dispersion=dispersion), floor=1)
            assert radius is not None
            self.assertLess(0.5 + dispersion, radius)

    def test_midpoint(self) -> None:
        self.assertEqual(rt.midpointFor(100.49), 100)
        self.assertEqual(rt.midpointFor(100.5), 101)


class RespondBatchTests(SynchronousTestCase):
    delegation = delegationAround(NOW)

    def clientRequests(
        self, n: int, versions: tuple[int, ...] = (1,)
    ) -> list[rt.ClientRequest]:
        return [rt.buildRequest(PUBLIC, versions) for _ in range(n)]

    def test_batchSizes(self) -> None:
        """
        Batches of 1 to 17 requests: every response verifies, with its own
        INDX, and a PATH as long as the tree is high.
        """
        for n in (1, 2, 3, 4, 5, 8, 16, 17):
            requests = self.clientRequests(n)
            responses = rt.respondBatch(
                [r.packet for r in requests], NOW, 3, self.delegation
            )
            height = (n - 1).bit_length()
            for index, (req, response) in enumerate(
                zip(requests, responses, strict=True)
            ):
                assert response is not None
                verified = rt.verifyResponse(req, response, PUBLIC)
                self.assertEqual(verified.index, index)
                self.assertEqual(verified.pathLength, height)
                self.assertEqual(verified.midpoint, round(NOW))
                self.assertEqual(verified.radius, 3)
                self.assertLessEqual(len(response), len(req.packet))

    def test_oneSignature(self) -> None:
        """
        One Ed25519 signature per version in a batch: a batch of 64 mixed
        version 1 and draft 11 requests signs twice.
        """
        signer = self.delegation.signer
        signs = Counter[int]()

        class CountingSigner:
            def sign(self, data: bytes) -> bytes:
                signs[len(data)] += 1
                return signer.sign(data)

        delegation = rt.Delegation(
            CountingSigner(),  # type: ignore[arg-type]
            self.delegation.publicKey,
            self.delegation.minTime,
            self.delegation.maxTime,
            self.delegation.certificates,
            self.delegation.srv,
            self.delegation.longTermKey,
        )
        requests = self.clientRequests(32) + self.clientRequests(32, (0x8000000B,))
        responses = rt.respondBatch([r.packet for r in requests], NOW, 3, delegation)
        self.assertEqual(sum(signs.values()), 2)
        roots = set()
        for req, response in zip(requests, responses, strict=True):
            assert response is not None
            rt.verifyResponse(req, response, PUBLIC)
            srep = rt.decodeMessage(
                rt.decodeMessage(rt.unframePacket(response))[rt.SREP]
            )
            roots.add(srep[rt.ROOT])
        self.assertEqual(len(roots), 1, "one tree over both versions' leaves")

    def test_drops(self) -> None:
        dropped = Counter[rt.DropReason]()
        good = rt.buildRequest(PUBLIC)
        batch = [
            b"",
            good.packet,
            request(versions=(7,)),
            request(publicKey=PUBLIC[::-1]),
        ]
        responses = rt.respondBatch(batch, NOW, 3, self.delegation, dropped)
        self.assertEqual(
            [r is not None for r in responses], [False, True, False, False]
        )
        self.assertEqual(
            dropped,
            Counter(
                {
                    rt.DropReason.SHORT: 1,
                    rt.DropReason.VERSION: 1,
                    rt.DropReason.SERVER: 1,
                }
            ),
        )
        assert responses[1] is not None
        self.assertEqual(rt.verifyResponse(good, responses[1], PUBLIC).pathLength, 0)

    def test_nothingToAnswer(self) -> None:
        self.assertEqual(rt.respondBatch([], NOW, 3, self.delegation), [])
        self.assertEqual(rt.respondBatch([b"x"], NOW, 3, self.delegation), [None])

    def test_neverLargerThanRequest(self) -> None:
        """
        A response larger than its request is dropped (§11.6): here with
        requests allowed down to 200 bytes.
        """
        self.patch(rt, "MIN_REQUEST_SIZE", 200)
        small = rt.buildRequest(PUBLIC, size=200)
        dropped = Counter[rt.DropReason]()
        self.assertEqual(
            rt.respondBatch([small.packet], NOW, 3, self.delegation, dropped), [None]
        )
        self.assertEqual(dropped, Counter({rt.DropReason.OVERSIZE: 1}))

    def test_largeBatchSplit(self) -> None:
        """
        More than 1024 requests make several trees, so no PATH grows past
        320 bytes.
        """
        requests = self.clientRequests(1030)
        responses = rt.respondBatch(
            [r.packet for r in requests], NOW, 3, self.delegation
        )
        last = rt.verifyResponse(requests[-1], responses[-1] or b"", PUBLIC)
        self.assertEqual((last.index, last.pathLength), (5, 3))
        first = rt.verifyResponse(requests[0], responses[0] or b"", PUBLIC)
        self.assertEqual(first.pathLength, rt.MAX_TREE_HEIGHT)

    def test_refusesBadArguments(self) -> None:
        packets = [rt.buildRequest(PUBLIC).packet]
        self.assertRaises(ValueError, rt.respondBatch, packets, NOW, 0, self.delegation)
        self.assertRaises(
            ValueError, rt.respondBatch, packets, NOW, 1 << 32, self.delegation
        )
        late = delegationAround(NOW - 10 * 86400)
        self.assertRaises(ValueError, rt.respondBatch, packets, NOW, 3, late)

    def test_versionsOnTheWire(self) -> None:
        """
        Version 1 and 0x8000000c responses carry TYPE and a signed VER and
        VERS; drafts 8 to 11's carry a top-level VER only.
        """
        for versions, signed in (
            ((1,), True),
            ((0x8000000C,), True),
            ((0x80000008,), False),
        ):
            req = rt.buildRequest(PUBLIC, versions)
            (response,) = rt.respondBatch([req.packet], NOW, 3, self.delegation)
            assert response is not None
            top = rt.decodeMessage(rt.unframePacket(response))
            srep = rt.decodeMessage(top[rt.SREP])
            self.assertEqual(rt.VER in srep, signed)
            self.assertEqual(rt.VERS in srep, signed)
            self.assertEqual(rt.TYPE in top, signed)
            self.assertEqual(rt.VER in top, not signed)
            self.assertEqual(top[rt.NONC], req.nonce)
            self.assertEqual(
                rt.verifyResponse(req, response, PUBLIC).version, versions[0]
            )

    def test_leafDependsOnVersion(self) -> None:
        """
        A version 1 leaf hashes the whole request, a draft 11 leaf only the
        nonce: altering the padding breaks the first proof, not the second.
        """
        for versions, survives in (((1,), False), ((0x8000000B,), True)):
            req = rt.buildRequest(PUBLIC, versions)
            (response,) = rt.respondBatch([req.packet], NOW, 3, self.delegation)
            assert response is not None
            altered = rt.ClientRequest(
                req.packet[:-4] + b"\1\0\0\0", req.nonce, req.versions
            )
            if survives:
                rt.verifyResponse(altered, response, PUBLIC)
            else:
                self.assertRaises(
                    rt.BadMerklePath, rt.verifyResponse, altered, response, PUBLIC
                )


def referenceAnswers(
    packets: list[bytes], radius: int, delegation: rt.Delegation
) -> list[bytes | rt.DropReason]:
    """
    The answers to a batch built from RFC 10049 itself, one response at a
    time: each request read by L{rt.parseRequest}, one Merkle tree over the
    leaves of those accepted (padded to a power of two with copies of the
    last), and each response encoded from its tags and signed on its own
    (Ed25519 signatures are deterministic, so the bytes are comparable).
    """
    reads = [rt.parseRequest(packet, delegation.srv) for packet in packets]
    answers: list[bytes | rt.DropReason] = [
        read if isinstance(read, rt.DropReason) else b"" for read in reads
    ]
    accepted = [
        (i, read) for i, read in enumerate(reads) if isinstance(read, rt.Request)
    ]
    if not accepted:
        return answers

    def hashed(data: bytes) -> bytes:
        return hashlib.sha512(data).digest()[:32]

    level = [
        hashed(b"\0" + (r.packet if r.version.leafFromRequest else r.nonce))
        for _, r in accepted
    ]
    level += [level[-1]] * ((1 << (len(level) - 1).bit_length()) - len(level))
    levels = [level]
    while len(level) > 1:
        level = [
            hashed(b"\1" + level[i] + level[i + 1]) for i in range(0, len(level), 2)
        ]
        levels.append(level)
    midpoint = rt.midpointFor(NOW)
    for index, (position, read) in enumerate(accepted):
        version = read.version
        srep = {
            rt.RADI: struct.pack("<I", radius),
            rt.MIDP: struct.pack("<Q", midpoint),
            rt.ROOT: levels[-1][0],
        }
        if version.signedVersion:
            srep[rt.VER] = struct.pack("<I", version.number)
            srep[rt.VERS] = rt.packVersions(rt.SERVER_VERSIONS)
        srepValue = rt.encodeMessage(srep)
        fields = {
            rt.SIG: delegation.signer.sign(version.responseContext + srepValue),
            rt.NONC: read.nonce,
            rt.PATH: b"".join(
                levels[h][(index >> h) ^ 1] for h in range(len(levels) - 1)
            ),
            rt.SREP: srepValue,
            rt.CERT: delegation.certificates[version.delegationContext],
            rt.INDX: struct.pack("<I", index),
        }
        if version.signedVersion:
            fields[rt.TYPE] = struct.pack("<I", 1)
        else:
            fields[rt.VER] = struct.pack("<I", version.number)
        response = rt.framePacket(rt.encodeMessage(fields))
        answers[position] = (
            response if len(response) <= len(read.packet) else rt.DropReason.OVERSIZE
        )
    return answers


OTHER_PUBLIC = publicBytes(seededKey(9))
NAMED_TAGS = {rt.VER, rt.NONC, rt.TYPE, rt.SRV, rt.ZZZZ}


@st.composite
def requestKinds(draw: st.DrawFn) -> dict[str, Any]:
    """
    A kind of client: the arguments of L{request} but the nonce, from
    which requests of one shape are made (and some that no server
    answers).
    """
    versions = draw(
        st.lists(
            st.sampled_from([1, 0x8000000C, 0x80000008, 0x8000000B, 7, 0x8000000E]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    if draw(st.booleans()):
        versions.sort()
    typeValue = draw(st.sampled_from([None, bytes(4), bytes(4), b"\1\0\0\0", bytes(8)]))
    extra = draw(
        st.dictionaries(
            st.integers(0, 0xFFFFFFFF).filter(lambda t: t not in NAMED_TAGS),
            st.binary(max_size=12).map(lambda v: v + bytes(-len(v) % 4)),
            max_size=3,
        )
    )
    if typeValue is not None:
        extra[rt.TYPE] = typeValue
    return {
        "versions": tuple(versions),
        "publicKey": draw(st.sampled_from([None, PUBLIC, OTHER_PUBLIC])),
        "size": draw(st.sampled_from([1020, 1024, 1036, 1100, 1500])),
        "extra": extra,
        "drop": () if typeValue is not None else (rt.TYPE,),
    }


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """
    A batch of requests from one to three kinds of client, each with its
    own nonce, some of them altered in one byte, cut short or lengthened.
    """
    kinds = draw(st.lists(requestKinds(), min_size=1, max_size=3))
    packets = []
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(st.sampled_from(kinds))
        packet = request(nonce=draw(st.binary(min_size=32, max_size=32)), **kind)
        change = draw(st.sampled_from(["none"] * 6 + ["byte", "cut", "longer"]))
        if change == "byte":
            position = draw(st.integers(0, len(packet) - 1))
            altered = bytearray(packet)
            altered[position] ^= draw(st.integers(1, 255))
            packet = bytes(altered)
        elif change == "cut":
            packet = packet[:-4]
        elif change == "longer":
            packet += bytes(4)
        packets.append(packet)
    return packets


class RequestShapeTests(SynchronousTestCase):
    """
    A server reads most requests by their shape (the bytes before the
    nonce, the size, TYPE), as met in earlier requests: its answers are
    those of the general reading, byte for byte.
    """

    delegation = delegationAround(NOW)

    @settings(
        max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(batches())
    def test_sameAnswers(self, packets: list[bytes]) -> None:
        """
        A batch of random requests, altered or not, is answered as the
        reference built from RFC 10049 answers it: without a memory of
        shapes, with a new one, and with one that knows the batch's shapes
        (the same batch again); and each drop is counted by its reason.
        """
        expected = referenceAnswers(packets, 3, self.delegation)
        memory = rt.RequestShapes()
        for name, shapes in [("none", None), ("new", memory), ("known", memory)]:
            dropped = Counter[rt.DropReason]()
            answers = rt.answerBatch(packets, NOW, 3, self.delegation, dropped, shapes)
            self.assertEqual(answers, expected, name)
            self.assertEqual(
                dropped,
                Counter(a for a in expected if isinstance(a, rt.DropReason)),
                name,
            )

    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        st.integers(0, rt.REQUEST_SIZE - 1),
        st.integers(1, 255),
        st.sampled_from([(1,), (0x8000000C,), (0x8000000B, 0x80000008)]),
    )
    def test_alteredRequestOfKnownShape(
        self, position: int, flip: int, versions: tuple[int, ...]
    ) -> None:
        """
        A request altered in one byte, after its shape was met, is answered
        or dropped as the general reading says, alone or among requests of
        that shape.
        """
        memory = rt.RequestShapes()
        known = request(versions=versions)
        rt.answerBatch([known], NOW, 3, self.delegation, None, memory)
        self.assertEqual(len(memory.shapes), 1)
        altered = bytearray(request(versions=versions, nonce=b"M" * 32))
        altered[position] ^= flip
        for packets in ([bytes(altered)], [known, bytes(altered), known]):
            self.assertEqual(
                rt.answerBatch(packets, NOW, 3, self.delegation, None, memory),
                referenceAnswers(packets, 3, self.delegation),
            )

    def test_fallsToGeneralReading(self) -> None:
        """
        Requests that differ from a known shape where it matters are read
        in full and dropped for their own reason: TYPE 1, another server,
        a length field that does not match, a cut or lengthened datagram.
        """
        memory = rt.RequestShapes()
        rt.answerBatch([request()], NOW, 3, self.delegation, None, memory)
        D = rt.DropReason
        longer = request() + bytes(4)
        cases = {
            "TYPE 1": (request(extra={rt.TYPE: b"\1\0\0\0"}), D.MALFORMED),
            "another server": (request(publicKey=OTHER_PUBLIC), D.SERVER),
            "cut": (request()[:-4], D.MALFORMED),
            "longer": (longer, D.MALFORMED),
            "no version spoken": (request(versions=(7,)), D.VERSION),
        }
        for name, (packet, reason) in cases.items():
            with self.subTest(name):
                answers = rt.answerBatch(
                    [request(), packet], NOW, 3, self.delegation, None, memory
                )
                self.assertEqual(answers[1], reason)
                self.assertIsInstance(answers[0], bytes)

    def test_shapesForOneServer(self) -> None:
        """
        The shapes met for one server are forgotten when the batch is
        another's: a request naming the first is not answered by the
        second.
        """
        memory = rt.RequestShapes()
        packet = request()
        (answer,) = rt.answerBatch([packet], NOW, 3, self.delegation, None, memory)
        self.assertIsInstance(answer, bytes)
        other = rt.makeDelegation(
            seededKey(9), seededKey(2), int(NOW) - 60, int(NOW) + 60
        )
        self.assertEqual(
            rt.answerBatch([packet], NOW, 3, other, None, memory),
            [rt.DropReason.SERVER],
        )
        self.assertEqual(memory.shapes, [])

    def test_boundedMemory(self) -> None:
        """
        A memory keeps the L{rt.MAX_SHAPES} shapes met last, the last
        first.
        """
        memory = rt.RequestShapes()
        kinds = [request(size=1036 + 4 * n) for n in range(rt.MAX_SHAPES + 3)]
        for packet in kinds:
            rt.answerBatch([packet], NOW, 3, self.delegation, None, memory)
        self.assertEqual(
            [shape.size for shape in memory.shapes],
            [len(packet) for packet in kinds[::-1][: rt.MAX_SHAPES]],
        )
        rt.answerBatch([kinds[-3]], NOW, 3, self.delegation, None, memory)
        self.assertEqual(memory.shapes[0].size, len(kinds[-3]))
        self.assertEqual(len(memory.shapes), rt.MAX_SHAPES)


class BuildRequestTests(SynchronousTestCase):
    def test_layout(self) -> None:
        """
        A 1024-byte message: VER (ascending), SRV, NONC, TYPE 0, ZZZZ of
        zero bytes, in the order of the RFC's own example request.
        """
        req = rt.buildRequest(PUBLIC, (0x8000000C, 1), nonce=b"x" * 32)
        self.assertEqual(len(req.packet), 1036)
        message = rt.unframePacket(req.packet)
        self.assertEqual(len(message), 1024)
        fields = rt.decodeMessage(message)
        self.assertEqual(list(fields), [rt.VER, rt.SRV, rt.NONC, rt.TYPE, rt.ZZZZ])
        self.assertEqual(fields[rt.VER], rt.packVersions((1, 0x8000000C)))
        self.assertEqual(fields[rt.SRV], hashlib.sha512(b"\xff" + PUBLIC).digest()[:32])
        self.assertEqual(fields[rt.TYPE], bytes(4))
        self.assertEqual(fields[rt.ZZZZ], bytes(len(fields[rt.ZZZZ])))
        self.assertEqual((req.nonce, req.versions), (b"x" * 32, (1, 0x8000000C)))

    def test_randomNonce(self) -> None:
        self.assertNotEqual(
            rt.buildRequest(PUBLIC).nonce, rt.buildRequest(PUBLIC).nonce
        )

    def test_refuses(self) -> None:
        self.assertRaises(ValueError, rt.buildRequest, PUBLIC, ())
        self.assertRaises(ValueError, rt.buildRequest, PUBLIC, (1, 1))
        self.assertRaises(ValueError, rt.buildRequest, PUBLIC, (0x8000000E,))
        self.assertRaises(ValueError, rt.buildRequest, PUBLIC, (1,), b"short")
        self.assertRaises(ValueError, rt.buildRequest, PUBLIC, (1,), None, None, 1000)

    def test_readBack(self) -> None:
        req = rt.buildRequest(PUBLIC)
        self.assertEqual(rt.readClientRequest(req.packet), req)
        self.assertRaises(
            rt.MessageFormatError, rt.readClientRequest, request(drop=(rt.NONC,))
        )


class VerifyResponseTests(SynchronousTestCase):
    """
    L{rt.verifyResponse} on responses built by hand, each wrong in one way.
    """

    online = seededKey(2)

    def hand(self, **changes: object) -> tuple[rt.ClientRequest, bytes]:
        versions = changes.pop("offered", (1, 0x8000000C, 0x8000000B))
        req = rt.buildRequest(PUBLIC, versions)  # type: ignore[arg-type]
        parts = HandResponse(req, LONG_TERM, self.online)
        for name, value in changes.items():
            setattr(parts, name, value)
        return req, parts.build()

    def assertFails(self, error: type[Exception], **changes: object) -> None:
        req, response = self.hand(**changes)
        self.assertRaises(error, rt.verifyResponse, req, response, PUBLIC)

    def test_valid(self) -> None:
        for version in (1, 0x8000000C, 0x8000000B):
            req, response = self.hand(version=version)
            verified = rt.verifyResponse(req, response, PUBLIC)
            self.assertEqual(
                (verified.midpoint, verified.radius, verified.version),
                (int(NOW), 3, version),
            )
            self.assertFalse(verified.legacyContexts)

    def test_draftContextsForVersion1(self) -> None:
        """
        Version 1 signed with draft 19's "RoughTime" strings, as servers
        built from the draft answer, is accepted and marked; 0x8000000c
        signed with the RFC's strings is not.
        """
        req, response = self.hand(
            responseContext=rt.DRAFT_RESPONSE_CONTEXT,
            delegationContext=rt.DRAFT_DELEGATION_CONTEXT,
        )
        self.assertTrue(rt.verifyResponse(req, response, PUBLIC).legacyContexts)
        self.assertFails(
            rt.WrongKey,
            version=0x8000000C,
            delegationContext=rt.RFC_DELEGATION_CONTEXT,
        )
        self.assertFails(
            rt.BadSignature,
            version=0x8000000C,
            responseContext=rt.RFC_RESPONSE_CONTEXT,
        )
        self.assertFails(
            rt.WrongKey, delegationContext=b"Roughtime v1 delegation signature"
        )

    def test_wrongKey(self) -> None:
        self.assertFails(rt.WrongKey, longTerm=seededKey(7))

    def test_badSignature(self) -> None:
        req, response = self.hand()
        for path in (
            (rt.SIG,),
            (rt.SREP, rt.MIDP),
            (rt.SREP, rt.RADI),
            (rt.SREP, rt.ROOT),
        ):
            with self.subTest(path):
                self.assertRaises(
                    rt.BadSignature,
                    rt.verifyResponse,
                    req,
                    flipped(response, path),
                    PUBLIC,
                )
        self.assertFails(
            rt.BadSignature, responseContext=b"RoughTime v1 response signature"
        )

    def test_alteredCertificate(self) -> None:
        req, response = self.hand()
        for path in (
            (rt.CERT, rt.SIG),
            (rt.CERT, rt.DELE, rt.MINT),
            (rt.CERT, rt.DELE, rt.PUBK),
        ):
            self.assertRaises(
                rt.WrongKey, rt.verifyResponse, req, flipped(response, path), PUBLIC
            )

    def test_badMerklePath(self) -> None:
        self.assertFails(rt.BadMerklePath, leafOverride=bytes(32))
        req, response = self.hand(topExtra={rt.PATH: bytes(32)})
        self.assertRaises(rt.BadMerklePath, rt.verifyResponse, req, response, PUBLIC)
        req, response = self.hand(topExtra={rt.INDX: struct.pack("<I", 1)})
        self.assertRaises(rt.BadMerklePath, rt.verifyResponse, req, response, PUBLIC)

    def test_nonceMismatch(self) -> None:
        self.assertFails(rt.NonceMismatch, topExtra={rt.NONC: b"z" * 32})

    def test_delegationExpired(self) -> None:
        self.assertFails(rt.DelegationExpired, midpoint=int(NOW) + 3601)
        self.assertFails(rt.DelegationExpired, midpoint=int(NOW) - 3601)
        self.assertFails(rt.DelegationExpired, minTime=int(NOW) + 1)

    def test_unofferedVersion(self) -> None:
        self.assertFails(rt.UnofferedVersion, offered=(1,), version=0x8000000C)
        self.assertFails(rt.UnofferedVersion, offered=(1,), version=0x80000010)
        self.assertFails(rt.UnofferedVersion, served=(0x8000000C,))

    def test_malformed(self) -> None:
        M = rt.MalformedResponse
        self.assertFails(M, drop=(rt.TYPE,))
        self.assertFails(M, typeValue=0)
        self.assertFails(M, radius=0)
        self.assertFails(M, srepDrop=(rt.VERS,))
        self.assertFails(M, srepDrop=(rt.VER,))
        self.assertFails(M, srepExtra={rt.VERS: rt.packVersions((0x8000000C, 1))})
        self.assertFails(M, topExtra={rt.VER: b"\2\0\0\0"})
        for name in (rt.SIG, rt.NONC, rt.PATH, rt.SREP, rt.CERT, rt.INDX):
            with self.subTest(rt.tagName(name)):
                self.assertFails(M, drop=(name,))
        self.assertFails(M, topExtra={rt.PATH: bytes(33 * 32)})
        self.assertFails(M, topExtra={rt.SIG: bytes(32)})
        self.assertFails(M, topExtra={rt.SREP: b"junk"})
        req, response = self.hand()
        self.assertRaises(M, rt.verifyResponse, req, response[:-4], PUBLIC)
        self.assertRaises(M, rt.verifyResponse, req, b"", PUBLIC)

    def test_draft12Lenient(self) -> None:
        """
        A 0x8000000c response may lack TYPE and VERS, as drafts 12 and 13
        sent them; drafts 8 to 11 have neither.
        """
        req, response = self.hand(
            version=0x8000000C, drop=(rt.TYPE,), srepDrop=(rt.VERS,)
        )
        self.assertEqual(rt.verifyResponse(req, response, PUBLIC).versions, ())

    def test_unknownTagsIgnored(self) -> None:
        """
        Undefined tags are ignored and reported (grease, §7).
        """
        extra = {rt.tag("QQQQ"): b"abcd", 0xFFFFFFFF: b""}
        req, response = self.hand(topExtra=extra, srepExtra={rt.tag("XYZ"): bytes(4)})
        verified = rt.verifyResponse(req, response, PUBLIC)
        self.assertEqual(set(verified.unknownTags), {"QQQQ", "0xffffffff"})

    @settings(
        max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.data())
    def test_mutationsOnlyFailVerification(self, data: st.DataObject) -> None:
        """
        Any single byte changed in a response makes it fail with a
        verification error (or, in ignored bytes, still verify): never
        another exception.
        """
        req, response = self.hand()
        position = data.draw(st.integers(0, len(response) - 1))
        value = data.draw(st.integers(0, 255))
        altered = bytearray(response)
        altered[position] = value
        with contextlib.suppress(rt.RoughtimeVerificationError):
            rt.verifyResponse(req, bytes(altered), PUBLIC)


class BenchScriptTests(SynchronousTestCase):
    """
    C{bench/roughtime.py} runs to the end on a tiny load and reports every
    row; its numbers are not checked.
    """

    def test_runs(self) -> None:
        from tests.test_bench import runBenchScript

        output = runBenchScript(self, "roughtime.py", "--count", "3")
        for size in (1, 16, 64, 128):
            self.assertIn(f"respondBatch, batch of {size} ", output)
        self.assertIn("Ed25519 sign", output)
        self.assertIn("client: verifyResponse", output)
