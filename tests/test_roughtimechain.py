"""
Tests for L{udptime.roughtimechain}: chained nonces, the causality check,
malfeasance reports (made, checked, tampered with), and server lists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.roughtimesupport import NOW, publicBytes, seededKey
from udptime import roughtime as rt
from udptime.roughtimechain import (
    Link,
    ReportError,
    ServerListError,
    causalityViolations,
    chainNonce,
    parseAddress,
    parseServerList,
    reportFor,
    verifyReport,
    versionsFor,
)


def reading(midpoint: int, radius: int) -> rt.Verified:
    return rt.Verified(midpoint, radius, 1, 0, 1 << 40, bytes(32), 0, 0)


def chain(offsets: list[float], versions: tuple[int, ...] = (1,)) -> list[Link]:
    """
    A chain over servers (seeded keys 1, 2, ...) whose clocks are
    C{offsets} seconds off, each asked one second after the last.
    """
    links: list[Link] = []
    previous: bytes | None = None
    for position, offset in enumerate(offsets):
        key = seededKey(position + 1)
        now = NOW + position + offset
        delegation = rt.makeDelegation(key, seededKey(50), int(now) - 60, int(now) + 60)
        blind = None if previous is None else os.urandom(32)
        nonce = None if previous is None else chainNonce(previous, blind or b"")
        request = rt.buildRequest(publicBytes(key), versions, nonce, blind)
        (response,) = rt.respondBatch([request.packet], now, 3, delegation)
        assert response is not None
        verified = rt.verifyResponse(request, response, publicBytes(key))
        links.append(
            Link(publicBytes(key), request, response, verified, f"s{position}")
        )
        previous = response
    return links


class ChainNonceTests(SynchronousTestCase):
    def test_rule(self) -> None:
        """
        H(previous response || rand): the first 32 bytes of SHA-512.
        """
        self.assertEqual(
            chainNonce(b"response", b"r" * 32),
            hashlib.sha512(b"response" + b"r" * 32).digest()[:32],
        )


class CausalityTests(SynchronousTestCase):
    def test_table(self) -> None:
        """
        Only an earlier response whose earliest time is after a later
        response's latest time breaks causality; a later response may be
        far later.
        """
        cases = [
            ([(100, 3), (200, 3)], []),
            ([(100, 3), (94, 3)], []),
            ([(100, 3), (93, 3)], [(0, 1)]),
            ([(100, 1), (50, 1), (100, 1), (40, 1)], [(0, 1), (0, 3), (1, 3), (2, 3)]),
            ([(1000, 3), (0, 3), (1003, 3)], [(0, 1)]),
        ]
        for values, expected in cases:
            readings = [reading(m, r) for m, r in values]
            self.assertEqual(causalityViolations(readings), expected, values)


class ReportTests(SynchronousTestCase):
    def test_consistent(self) -> None:
        links = chain([0, 0, 0])
        verdict = verifyReport(json.dumps(reportFor(links)))
        self.assertFalse(verdict.provesMalfeasance)
        self.assertEqual(
            [link.response for link in verdict.links], [li.response for li in links]
        )

    def test_format(self) -> None:
        """
        RFC 10049's format: "responses", each with base64 "publicKey",
        "request", "response", and "rand" for every chained request.
        """
        links = chain([0, 0])
        report = reportFor(links)
        first, second = report["responses"]
        self.assertEqual(set(first), {"publicKey", "request", "response"})
        self.assertEqual(set(second), {"publicKey", "request", "response", "rand"})
        self.assertEqual(base64.b64decode(second["rand"]), links[1].request.blind)
        self.assertEqual(base64.b64decode(first["response"]), links[0].response)

    def test_provesMalfeasance(self) -> None:
        """
        A server 100 s ahead, asked first, then an honest one: the report
        proves it, and checks out again from its JSON text.
        """
        links = chain([100, 0])
        verdict = verifyReport(json.dumps(reportFor(links)).encode())
        self.assertTrue(verdict.provesMalfeasance)
        self.assertEqual(verdict.violations, ((0, 1),))

    def test_secondRoundNeeded(self) -> None:
        """
        An honest server then one 100 s ahead look consistent; asking both
        again in the same order shows it (§8.2).
        """
        self.assertEqual(
            causalityViolations([li.verified for li in chain([0, 100])]), []
        )
        links = chain([0, 100, 0, 100])
        self.assertEqual(causalityViolations([li.verified for li in links]), [(1, 2)])

    def test_drafts(self) -> None:
        links = chain([50, 0], versions=(0x8000000B,))
        self.assertTrue(verifyReport(reportFor(links)).provesMalfeasance)

    def tampered(self, change: Any) -> ReportError:
        report = reportFor(chain([100, 0, 0]))
        change(report["responses"])
        return self.assertRaises(ReportError, verifyReport, report)

    def test_tampering(self) -> None:
        """
        A report whose chain or responses were altered proves nothing.
        """

        def swap(responses: list[dict[str, str]]) -> None:
            responses[1], responses[2] = responses[2], responses[1]

        def otherRand(responses: list[dict[str, str]]) -> None:
            responses[2]["rand"] = base64.b64encode(bytes(32)).decode()

        def noRand(responses: list[dict[str, str]]) -> None:
            del responses[1]["rand"]

        def otherKey(responses: list[dict[str, str]]) -> None:
            responses[0]["publicKey"] = base64.b64encode(
                publicBytes(seededKey(9))
            ).decode()

        def alteredResponse(responses: list[dict[str, str]]) -> None:
            packet = bytearray(base64.b64decode(responses[1]["response"]))
            packet[-40] ^= 1
            responses[1]["response"] = base64.b64encode(bytes(packet)).decode()

        def notBase64(responses: list[dict[str, str]]) -> None:
            responses[2]["request"] = "!!!"

        for change, index in (
            (swap, 1),
            (otherRand, 2),
            (noRand, 1),
            (otherKey, 0),
            (alteredResponse, 1),
            (notBase64, 2),
        ):
            self.assertEqual(self.tampered(change).index, index, change.__name__)

    def test_malformed(self) -> None:
        for report in ("", "[]", "{}", '{"responses": []}', '{"responses": [1]}'):
            self.assertRaises(ReportError, verifyReport, report)

    def test_unchainedLinkRefused(self) -> None:
        links = chain([0, 0])
        unchained = Link(
            links[1].publicKey,
            rt.ClientRequest(links[1].request.packet, links[1].request.nonce, (1,)),
            links[1].response,
            links[1].verified,
        )
        self.assertRaises(ValueError, reportFor, [links[0], unchained])

    def test_wrappedBase64(self) -> None:
        """
        Base64 values broken over lines (as printed documents show them) are
        read.
        """
        report = reportFor(chain([0]))
        text = report["responses"][0]["request"]
        report["responses"][0]["request"] = "\n".join(
            text[i : i + 70] for i in range(0, len(text), 70)
        )
        verifyReport(report)


KEY = base64.b64encode(publicBytes(seededKey(1))).decode()


def serverList(*servers: dict[str, Any]) -> str:
    return json.dumps({"servers": list(servers)})


def entry(**changes: Any) -> dict[str, Any]:
    server = {
        "name": "example",
        "version": 1,
        "publicKeyType": "ed25519",
        "publicKey": KEY,
        "addresses": [
            {"protocol": "tcp", "address": "roughtime.example.com:2002"},
            {"protocol": "udp", "address": "roughtime.example.com:2002"},
            {"protocol": "udp", "address": "[2001:db8::2:33]:2002"},
        ],
    }
    server.update(changes)
    return server


class ServerListTests(SynchronousTestCase):
    def test_rfcFormat(self) -> None:
        servers, skipped = parseServerList(serverList(entry()))
        self.assertEqual(skipped, [])
        (server,) = servers
        self.assertEqual(server.name, "example")
        self.assertEqual(server.publicKey, publicBytes(seededKey(1)))
        self.assertEqual(server.versions, (1,))
        self.assertEqual(
            server.addresses,
            (("roughtime.example.com", 2002), ("2001:db8::2:33", 2002)),
        )

    def test_versions(self) -> None:
        """
        Integers (the RFC's), decimal strings, and the names of
        Cloudflare's list; Google's Roughtime and unknown numbers are not
        spoken.
        """
        self.assertEqual(versionsFor(0x8000000C), (0x8000000C,))
        self.assertEqual(versionsFor(2147483660), (0x8000000C,))
        self.assertEqual(versionsFor("1"), (1,))
        self.assertEqual(versionsFor("IETF-Roughtime"), rt.SERVER_VERSIONS)
        for bad in ("Google-Roughtime", 3000600613, 2, "x", True, None, 1.0):
            self.assertRaises(ServerListError, versionsFor, bad)

    def test_skipped(self) -> None:
        """
        Entries that cannot be used are left out, each with its reason.
        """
        servers, skipped = parseServerList(
            serverList(
                entry(name="good"),
                entry(name="rsa", publicKeyType="rsa"),
                entry(name="google", version="Google-Roughtime"),
                entry(name="tcp", addresses=[{"protocol": "tcp", "address": "a:1"}]),
                entry(name="short", publicKey=base64.b64encode(b"k").decode()),
                entry(name="port", addresses=[{"protocol": "udp", "address": "a"}]),
                {"nameless": True},
            )
        )
        self.assertEqual([s.name for s in servers], ["good"])
        self.assertEqual(len(skipped), 6)
        self.assertIn("google: version 'Google-Roughtime' is not spoken here", skipped)
        self.assertIn("port: bad address 'a': expected host:port", skipped)

    def test_cloudflareEcosystem(self) -> None:
        """
        Cloudflare's ecosystem.json gives versions as strings.
        """
        servers, _ = parseServerList(serverList(entry(version="IETF-Roughtime")))
        self.assertEqual(servers[0].versions, rt.SERVER_VERSIONS)

    def test_notAList(self) -> None:
        for data in ("", "[]", '{"servers": 1}', "{}"):
            self.assertRaises(ServerListError, parseServerList, data)

    def test_addresses(self) -> None:
        self.assertEqual(parseAddress("192.0.2.33:2002"), ("192.0.2.33", 2002))
        self.assertEqual(parseAddress("[::1]:2003"), ("::1", 2003))
        for bad in (
            "host",
            "host:",
            ":2002",
            "host:0",
            "host:65536",
            "::1:2002",
            "[x]:1",
        ):
            self.assertRaises(ServerListError, parseAddress, bad)
