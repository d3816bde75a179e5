"""
Tests for the loop guard of the services that answer any datagram: what a
reply looks like (L{udptime.replyshapes}), and loops between two real
udptime servers started by forged datagrams.
"""

from __future__ import annotations

import os
import struct

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support import TwistdServer, freePort, missing, udpQuery, waitFor
from tests.test_security import forgeUDP, report, summaryTotals
from udptime import daytime, rfc868, text
from udptime.clock import ERA_SECONDS, NTP_UNIX_OFFSET
from udptime.replyshapes import TIME_REPLY_SPAN, looksLikeReply

NOW = 1_795_000_000.0


class LooksLikeReplyTests(SynchronousTestCase):
    """
    L{looksLikeReply} knows the replies of text, Time and Daytime services,
    and no request.
    """

    def test_replies(self) -> None:
        replies = [
            text.buildReply(text.TimeRequest(), NOW),
            text.buildReply(text.TimeRequest(text.TimeFormat.UNIX), NOW),
            text.buildReply(text.TimeRequest(text.TimeFormat.RFC2822), NOW),
            text.buildReply(text.TimeRequest(text.TimeFormat.CTIME), NOW),
            text.buildReply(text.MonthRequest(3), NOW),
            text.errorReply(text.TextRequestError("request is not UTF-8 text")),
            daytime.buildReply(NOW),
            rfc868.buildReply(NOW),
            rfc868.buildReply(NOW - TIME_REPLY_SPAN + 1),
        ]
        for reply in replies:
            self.assertTrue(looksLikeReply(reply, NOW), reply)

    def test_requests(self) -> None:
        requests = [
            b"",
            b"time",
            b"unix",
            b"iso ",
            b"ctime",
            b"time\n",
            b"iso Europe/Paris\n",
            b"month 3",
            b"hello world\n",
            b"udptime echo 0123456789abcdef",
            b"\xff\xfe\n",
            b"\n",
            b"x" * 600 + b"\n",
            rfc868.buildReply(NOW + 2 * TIME_REPLY_SPAN),
            struct.pack("!I", 0),
        ]
        for request in requests:
            self.assertFalse(looksLikeReply(request, NOW), request)


class TimeReplySpanTests(SynchronousTestCase):
    """
    A 4-byte datagram is an RFC 868 reply when its time is within
    L{TIME_REPLY_SPAN} of the clock, modulo the 2^32-second era, whatever
    the clock did between two datagrams (the span is worked out once a
    second and kept).
    """

    @staticmethod
    def near(seconds: int, now: float) -> bool:
        ahead = (seconds - int(now) - NTP_UNIX_OFFSET) % ERA_SECONDS
        return ahead <= TIME_REPLY_SPAN or ERA_SECONDS - ahead <= TIME_REPLY_SPAN

    @given(
        seconds=st.integers(0, ERA_SECONDS - 1),
        times=st.lists(st.floats(0.0, 2.0 * ERA_SECONDS), min_size=1, max_size=4),
    )
    @example(seconds=0, times=[ERA_SECONDS - NTP_UNIX_OFFSET + 100.5])
    @example(seconds=ERA_SECONDS - 1, times=[ERA_SECONDS - NTP_UNIX_OFFSET + 0.0])
    @example(seconds=86400, times=[ERA_SECONDS - NTP_UNIX_OFFSET + 0.0])
    @example(seconds=86401, times=[ERA_SECONDS - NTP_UNIX_OFFSET + 0.999])
    @example(seconds=1000, times=[NOW, 1000.0 - NTP_UNIX_OFFSET + ERA_SECONDS, NOW])
    def test_sameAsTheFormula(self, seconds: int, times: list[float]) -> None:
        data = struct.pack("!I", seconds)
        for now in times:
            self.assertEqual(looksLikeReply(data, now), self.near(seconds, now))


class ServerLoopTests(SynchronousTestCase):
    """
    Two real udptime servers, each with a text and an echo service on ports
    the static loop guard does not know, and no per-client rate limit
    (C{--rate 0}): datagrams forged to one service of the first in the name
    of one of the second start loops that die at once.
    """

    def test_forgedLoopsDie(self) -> None:
        """
        1, 2, 4 and 16 different datagrams forged at once, echo <-> echo,
        text <-> text, echo <-> text and text <-> echo: every loop is caught
        (counted C{looped}) after at most two answers, however many were
        injected, and the services still answer clients.
        """
        if os.geteuid() != 0:
            missing("forging a source address needs a raw socket (root)")
        hosts = ["127.0.31.1", "127.0.31.2"]
        servers: list[TwistdServer] = []
        ports: list[dict[str, int]] = []
        for host in hosts:
            text, echo = freePort(), freePort()
            while echo == text:
                echo = freePort()
            server = TwistdServer(
                ["--port", str(text), "--echo-port", str(echo), "--interface", host,
                 "--rate", "0", "--summary-interval", "1", "--timezone", "UTC"]
            )  # fmt: skip
            self.addCleanup(server.cleanup)
            server.start(listeners=2)
            servers.append(server)
            ports.append({"text": text, "echo": echo})

        def looped() -> int:
            return sum(
                summaryTotals(server.log(), name).get("looped", 0)
                for server in servers
                for name in ("text", "echo")
            )

        injected = 0
        for target, origin in [
            ("echo", "echo"),
            ("text", "text"),
            ("echo", "text"),
            ("text", "echo"),
        ]:
            for count in [1, 2, 4, 16]:
                for n in range(count):
                    forgeUDP(
                        (hosts[1], ports[1][origin]),
                        (hosts[0], ports[0][target]),
                        f"loop {n} of {count}, {target} from {origin}".encode(),
                    )
                injected += count
                waitFor(
                    lambda: looped() >= injected,  # noqa: B023
                    f"{count} loops {target} <-> {origin} to be caught",
                )
        for host, served in zip(hosts, ports, strict=True):
            self.assertEqual(udpQuery(b"echo?", host, served["echo"]), b"echo?")
            self.assertTrue(udpQuery(b"time", host, served["text"]).endswith(b"\n"))
        totals = []
        for server in servers:
            self.assertEqual(server.stop(), 0)
            totals += [summaryTotals(server.log(), name) for name in ("text", "echo")]
        report("forged loops", injected=injected, totals=totals)
        self.assertEqual(sum(t.get("looped", 0) for t in totals), injected)
        # Each loop: the first server answers the forged datagram, the second
        # answers that, the first refuses the answer.  (The 4 queries above
        # are answered too.)
        self.assertLessEqual(
            sum(t.get("answered", 0) for t in totals), 2 * injected + 4
        )
