"""
A UDP balancer for many-instance tests: nftables DNAT inside a network
namespace, and a health loop that keeps the balancer's backends to those
that answer.

nftables spreads new flows (a new source address and port) over the
backends with C{numgen inc} (round robin) or C{jhash ip saddr} (one backend
per client address); conntrack keeps every later datagram of a flow on the
backend its first one reached, and rewrites the replies' source to the
virtual address.  nftables itself checks no backend: L{HealthLoop} probes
each one directly and rebuilds the rule with the live ones.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tests.netns import NetworkNamespace, run
from tests.support import containerScript
from udptime.ntp import NTPClientCodec
from udptime.reading import QueryError

TABLE = "udptime_fleet"
"""The nftables table (family C{ip}) the balancer owns in its namespace."""

FORWARD_CHAIN = "forward_tcp"
"""The chain of L{TABLE} that forwards a TCP port to one backend."""

ROUND_ROBIN = "numgen inc"
"""Each new flow to the next backend."""

SOURCE_HASH = "jhash ip saddr"
"""Every flow of one client address to one backend."""


def ruleset(vip: str, port: int, spread: str, backends: Sequence[str]) -> str:
    """
    The nftables script that balances UDP datagrams to C{vip}:C{port} over
    C{backends} by C{spread}, replacing the rule there was, in one
    transaction: the chain is flushed and the rule added with a map of
    exactly C{backends}, so that C{mod N} always matches the map.  With no
    backends the chain is left empty.
    """
    lines = [
        f"add table ip {TABLE}",
        f"add chain ip {TABLE} prerouting"
        " { type nat hook prerouting priority dstnat; policy accept; }",
        f"flush chain ip {TABLE} prerouting",
    ]
    if backends:
        elements = ", ".join(f"{i} : {a}" for i, a in enumerate(backends))
        lines.append(
            f"add rule ip {TABLE} prerouting ip daddr {vip} udp dport {port}"
            f" dnat to {spread} mod {len(backends)} map {{ {elements} }}"
        )
    return "\n".join(lines) + "\n"


def forwardingRuleset(vip: str, port: int, backend: str) -> str:
    """
    The nftables script that sends TCP connections to C{vip}:C{port} to
    C{backend} (the same port), in the chain L{FORWARD_CHAIN} of L{TABLE},
    replacing the rule there was: for a TCP service that one backend
    serves (an NTS-KE endpoint), beside the UDP balancing of L{ruleset}.
    """
    return (
        f"add table ip {TABLE}\n"
        f"add chain ip {TABLE} {FORWARD_CHAIN}"
        " { type nat hook prerouting priority dstnat; policy accept; }\n"
        f"flush chain ip {TABLE} {FORWARD_CHAIN}\n"
        f"add rule ip {TABLE} {FORWARD_CHAIN} ip daddr {vip} tcp dport {port}"
        f" dnat to {backend}\n"
    )


class NftablesBalancer:
    """
    DNAT of UDP datagrams to C{vip}:C{port} over a set of backends, in the
    nftables table L{TABLE} of C{namespace}.

    @ivar spread: L{ROUND_ROBIN} or L{SOURCE_HASH}.
    """

    def __init__(
        self,
        namespace: NetworkNamespace,
        nft: str,
        vip: str,
        port: int,
        spread: str = ROUND_ROBIN,
    ) -> None:
        self.namespace = namespace
        self.nft = nft
        self.vip = vip
        self.port = port
        self.spread = spread

    def install(self, backends: Sequence[str]) -> None:
        """
        Balance over C{backends} from now on (flows already pinned to a
        backend stay there: see L{forget}).
        """
        script = ruleset(self.vip, self.port, self.spread, backends)
        run(self.namespace.command(self.nft, "-f", "-"), input=script)

    def forwardTCP(self, port: int, backend: str) -> None:
        """
        Also send TCP connections to the virtual address's C{port} to
        C{backend} (see L{forwardingRuleset}); L{install} leaves this alone.
        """
        script = forwardingRuleset(self.vip, port, backend)
        run(self.namespace.command(self.nft, "-f", "-"), input=script)

    def backends(self) -> list[str]:
        """
        The backends of the rule the kernel holds now, in map order, read
        back from C{nft -j}.
        """
        output = self.namespace.run(
            self.nft, "-j", "list", "chain", "ip", TABLE, "prerouting"
        )
        found: list[str] = []
        for item in json.loads(output)["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            for expression in rule["expr"]:
                if "dnat" in expression:
                    pairs = expression["dnat"]["addr"]["map"]["data"]["set"]
                    found.extend(address for _, address in sorted(pairs))
        return found

    def forget(self, conntrack: str, backend: str) -> None:
        """
        Delete the conntrack entries of flows pinned to C{backend}, so that
        their next datagrams are balanced afresh (a client that keeps its
        source port would otherwise keep reaching a dead backend).
        """
        self.namespace.run(
            conntrack, "-D", "-p", "udp", "--reply-src", backend, check=False
        )


def ntpProbe(address: str, port: int, timeout: float) -> bool:
    """
    Whether the NTP service at C{address}:C{port} answers one request with
    a valid reply (the origin echoed, the right mode) within C{timeout}
    seconds.  A connected socket, so that a closed port fails at once.
    """
    codec = NTPClientCodec()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            sentAt = time.time()
            request, cookie = codec.buildRequest(sentAt)
            sock.send(request)
            deadline = time.monotonic() + timeout
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                data = sock.recv(1024)
                try:
                    codec.parseReply(data, cookie, sentAt, time.time())
                except QueryError:
                    continue
                return True
        except OSError:  # refused (ICMP port unreachable) or timed out
            return False


healthzProbe: Callable[[str, int, float], bool] = containerScript().checkHealthz
"""
Whether C{http://address:port/healthz} answers 200 within C{timeout}
seconds: the image's own health check (C{deploy/container.py}).
"""


@dataclass(frozen=True)
class Backend:
    """
    One instance behind the balancer.

    @ivar address: where the balancer sends its flows.
    @ivar probePort: the port its health probe asks.
    """

    address: str
    probePort: int


class HealthLoop:
    """
    Probe every backend directly every C{interval} seconds, from a thread
    inside the balancer's namespace; a backend that failed C{fall} probes
    in a row is taken out of the balancer (and its flows forgotten), one
    that passed C{rise} in a row is taken back in.

    @ivar live: the backends in the balancer now, in the order given.
    @ivar events: C{("down" | "up", address)}, in order.
    @ivar errors: what went wrong in the thread (the loop goes on).
    """

    def __init__(
        self,
        balancer: NftablesBalancer,
        backends: Sequence[Backend],
        probe: Callable[[str, int, float], bool],
        conntrack: str,
        interval: float = 0.5,
        timeout: float = 0.3,
        fall: int = 2,
        rise: int = 2,
    ) -> None:
        self.balancer = balancer
        self.backends = list(backends)
        self.probe = probe
        self.conntrack = conntrack
        self.interval = interval
        self.timeout = timeout
        self.fall = fall
        self.rise = rise
        self.live = [b.address for b in backends]
        self.events: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.rounds = 0
        self._streaks: dict[str, int] = {b.address: 0 for b in backends}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """
        Install every backend and start probing.
        """
        self.balancer.install(self.live)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """
        Stop probing (bounded wait for the thread).
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self.balancer.namespace.enter()
        except OSError as error:
            self.errors.append(f"cannot enter the balancer's namespace: {error}")
            return
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.check()
            except Exception as error:  # recorded for the test, the loop goes on
                self.errors.append(repr(error))
            self.rounds += 1
            self._stop.wait(max(self.interval - (time.monotonic() - started), 0.0))

    def check(self) -> None:
        """
        One round: probe each backend, and rebuild the balancer when the set
        of live backends changed.
        """
        before = list(self.live)
        states = self._probeAll()
        live = []
        for backend in self.backends:
            address = backend.address
            streak = self._streaks[address]
            # A positive streak counts passes in a row, a negative one failures.
            streak = max(streak, 0) + 1 if states[address] else min(streak, 0) - 1
            self._streaks[address] = streak
            if address in before:
                if streak <= -self.fall:
                    self.events.append(("down", address))
                else:
                    live.append(address)
            elif streak >= self.rise:
                self.events.append(("up", address))
                live.append(address)
        if live != before:
            self.balancer.install(live)
            for address in set(before) - set(live):
                self.balancer.forget(self.conntrack, address)
            self.live = live

    def _probeAll(self) -> Mapping[str, bool]:
        return {
            backend.address: self.probe(
                backend.address, backend.probePort, self.timeout
            )
            for backend in self.backends
        }
