"""
Admission policy shared by every udptime service.

A service on a public address meets floods from one host, floods with forged
source addresses, reflection attacks that aim its replies at a victim, and
ping-pong loops with other small UDP services.  The base protocol
(L{udptime.server.UDPServerProtocol}) asks one L{Policy} per service about
every datagram before the codec sees it; the policy answers with a
L{Verdict}: L{ADMIT}, or a L{Refusal<udptime.decision.Refusal>} that is the
protocol's decision as it stands (callers test C{verdict is ADMIT}: nothing
else admits, and L{ADMIT} is not false, so that no missing or falsy value
can pass for it):

  - L{ADMIT}: answer it;
  - L{LOOPED}: its source port is 0, a well-known small service port, or the
    port of one of the server's services (the loop guard), or it comes from
    a peer the service just answered and is that reply coming back or has
    the shape of a reply (L{ReplyMemory}, asked by the protocol);
  - L{DENIED}: an allow/deny list (L{AccessList}) refuses its source;
  - L{LIMITED}: its source, or the whole service, is over its rate;
  - L{KISS}: limited, and this one deserves an NTP Kiss-o'-Death (counted
    as limited, as L{LIMITED} is, by a protocol that has none).

The pieces:

  - L{RateLimiter}: a token bucket per client (IPv4 address, IPv6 prefix)
    in a table with a hard entry bound and O(1) eviction of the oldest
    entry, so that a flood from millions of forged addresses costs a constant
    amount of memory and time per datagram, or one bucket for all (the
    optional global reply cap, the global Kiss-o'-Death cap, bounded
    logging); L{SourceLimiter} adds the verdicts of the per-client limits
    (and picks the requests that get a Kiss-o'-Death);
  - L{AccessList}: chrony-style allow/deny rules, most specific network wins;
  - L{ReplyMemory}: the guard of the services that answer any datagram
    against answering each other (or a copy of themselves elsewhere).

The buckets are "generic cell rate" buckets (GCRA): each stores one number,
the theoretical arrival time of the next request at the sustained rate.  A
source may send C{burst} requests back to back and C{rate} per second after
that, so in any window of C{t} seconds it gets at most C{burst + rate * t}
replies.  All time is passed in (seconds, as a float): nothing here reads a
clock.  A clock step backwards would leave arrival times far in the future;
they are reset when seen, so a stepped clock never locks a client out.
"""

from __future__ import annotations

import ipaddress
import math
import random
import socket
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal, TypeAlias

from udptime import counters, replyshapes
from udptime.decision import Refusal


class Admission(Enum):
    """
    The one verdict that admits a datagram: L{ADMIT}.
    """

    ADMIT = "admit"


ADMIT: Final = Admission.ADMIT
"""Verdict: answer the datagram."""
DENIED: Final = Refusal(counters.DENIED)
"""Verdict: an allow/deny list refuses the source."""
LOOPED: Final = Refusal(counters.LOOPED)
"""Verdict: the loop guard refuses the datagram."""
LIMITED: Final = Refusal(counters.LIMITED)
"""Verdict: the source or the service is over its rate; drop silently."""
KISS: Final = Refusal(counters.LIMITED)
"""Verdict: over the rate, and the protocol may answer with a refusal (an NTP
Kiss-o'-Death RATE packet); counted as limited."""

Verdict: TypeAlias = Literal[Admission.ADMIT] | Refusal
"""What L{Policy.admit} decides: L{ADMIT}, or the refusal."""

DEFAULT_RATE: Final = 1.0
"""Sustained requests per second answered for one source."""
DEFAULT_BURST: Final = 32
"""Requests one source may send back to back before it is limited."""
DEFAULT_MAX_CLIENTS: Final = 100_000
"""Entries in a service's per-source table."""
DEFAULT_IPV6_PREFIX: Final = 64
"""IPv6 clients are grouped by this prefix length (one /64 is one client)."""
DEFAULT_LEAK: Final = 0.25
"""The fraction of the requests over a client's limit that a service whose
replies never outgrow its requests (NTP) answers anyway, at random: chrony's
default C{ratelimit leak 2}, one in four."""
MAX_LEAK: Final = 0.5
"""The largest leak (chrony's C{leak 1}): more would let a flood through."""
DEFAULT_KOD_INTERVAL: Final = 8.0
"""At most one Kiss-o'-Death per client in this many seconds."""
DEFAULT_KOD_RATE: Final = 10.0
"""At most this many Kiss-o'-Death packets per second per service."""
DEFAULT_LOOP_WINDOW: Final = 2.0
"""Seconds a service that answers any datagram remembers each reply it sent,
to see it (or another service's reply) come back (L{ReplyMemory})."""
DEFAULT_LOOP_MEMORY: Final = 16384
"""Replies such a service remembers at most (L{ReplyMemory})."""

SERVICE_PORTS: Final = frozenset({7, 13, 17, 19, 37, 123})
"""Echo, Daytime, Quote of the Day, Chargen, Time and NTP: the small services
a datagram from which may be a reply in a ping-pong loop (BSD inetd drops
these too, but for Quote of the Day, which answers any datagram as well)."""

_SLACK: Final = 1e-3
"""Fraction of an interval by which an event may come early: times near
2e9 s carry rounding errors of about 1e-7 s."""
_KOD_TABLE_SIZE: Final = 4096
KEY_CACHE_SIZE: Final = 4096
"""
IPv6 source addresses (among them IPv4-mapped ones, as a dual-stack socket
reports IPv4 clients) whose table key a rate limiter keeps; emptied when
full, so that a flood of new sources costs bounded memory.
"""
_CACHE_SIZE: Final = 65536
_MAPPED_PREFIX: Final = "::ffff:"

ClientKey: TypeAlias = str | int
"""A client's identity: an IPv4 address as text, or an IPv6 prefix as an
integer."""

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimiter:
    """
    Token buckets by client, in a table of at most C{maxClients} entries:
    each client may send C{burst} requests back to back and C{rate} per
    second after that (L{take}); or one bucket every client shares
    (L{admit}, the bucket of L{EVERYONE}).  The one implementation of
    udptime's buckets: the per-client limits (L{SourceLimiter}) and the
    single buckets (the global reply cap, the Kiss-o'-Death cap, bounded
    logging) are all of this class (one class, so that the hot path's calls
    of L{take} always meet the same type).

    IPv4 clients are keyed by address; IPv6 clients by their first
    C{ipv6Prefix} bits (a site's /64 is one client, so that an attacker
    holding a /64 cannot create 2^64 clients); IPv4-mapped IPv6 addresses, as
    a dual-stack socket reports IPv4 peers, count as IPv4.

    When the table is full a new client evicts the oldest entry, in O(1).  An
    evicted client starts again with a full bucket, so resetting one address
    costs an attacker C{maxClients} packets from other addresses.

    @ivar rate: sustained requests per second for one client.
    @ivar burst: requests one client may send back to back.
    @ivar interval: seconds between requests at the sustained rate.
    @ivar maxClients: the table's bound.
    @ivar ipv6Prefix: the prefix length grouping IPv6 clients.
    @ivar evictions: entries evicted so far.
    @ivar refused: requests refused so far.
    @ivar then: a limiter whose shared bucket every request this one
        admits must also pass (the global cap after a service's per-client
        limits: one call takes both tokens), or L{None}.
    """

    __slots__ = (
        "_arrivals",
        "_horizon",
        "_keys",
        "_order",
        "_shift",
        "_tolerance",
        "burst",
        "evictions",
        "interval",
        "ipv6Prefix",
        "maxClients",
        "rate",
        "refused",
        "then",
    )

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        maxClients: int = DEFAULT_MAX_CLIENTS,
        ipv6Prefix: int = DEFAULT_IPV6_PREFIX,
    ) -> None:
        """
        @param rate: sustained requests per second for one client (positive).
        @param burst: requests one client may send back to back (at least 1).
        @param maxClients: the table's bound (at least 1).
        @param ipv6Prefix: prefix length grouping IPv6 clients (1-128).
        @raise ValueError: a parameter is out of range.
        """
        if not rate > 0.0 or rate == float("inf"):
            raise ValueError(f"rate must be a positive number, not {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        if maxClients < 1:
            raise ValueError(f"maxClients must be at least 1, not {maxClients}")
        if not 1 <= ipv6Prefix <= 128:
            raise ValueError(f"ipv6Prefix must be 1-128, not {ipv6Prefix}")
        self.rate = rate
        self.burst = burst
        self.maxClients = maxClients
        self.ipv6Prefix = ipv6Prefix
        self.interval = 1.0 / rate
        self._tolerance = (burst - 1 + _SLACK) * self.interval
        # A steady clock never puts an arrival further ahead than
        # tolerance + interval; the margin absorbs rounding.
        self._horizon = self._tolerance + 2.0 * self.interval
        self._shift = 128 - ipv6Prefix
        self._arrivals: dict[ClientKey, float] = {}
        self._keys: dict[str, ClientKey] = {}
        self._order: deque[ClientKey] = deque()
        self.evictions = 0
        self.refused = 0
        self.then: RateLimiter | None = None

    def admit(self, now: float) -> bool:
        """
        Whether an event at time C{now} is within the rate of the bucket
        every client shares (L{EVERYONE}); an admitted event takes a token.
        """
        return self.take(EVERYONE, now) is None

    def __len__(self) -> int:
        """
        The number of clients in the table.
        """
        return len(self._arrivals)

    def clientKey(self, host: str) -> ClientKey:
        """
        The table key of a source address as Twisted reports it.
        """
        if ":" not in host:
            return host
        if host.startswith(_MAPPED_PREFIX) and "." in host:
            return host[len(_MAPPED_PREFIX) :]
        try:
            packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        except (OSError, ValueError):
            return host
        return int.from_bytes(packed, "big") >> self._shift

    def keyOf(self, host: str) -> ClientKey:
        """
        L{clientKey} for C{host}, kept in a bounded cache when it is an
        IPv6 address (or an IPv4 one as a dual-stack socket gives it,
        C{::ffff:192.0.2.1}), whose key costs a conversion.
        """
        keys = self._keys
        key = keys.get(host)
        if key is None:
            if len(keys) >= KEY_CACHE_SIZE:
                keys.clear()
            key = keys[host] = self.clientKey(host)
        return key

    def take(self, host: str, now: float) -> RateLimiter | None:
        """
        Take a token for a request from C{host} at time C{now} from its
        client's bucket, then from the shared bucket (L{EVERYONE}) of each
        limiter of the chain of L{then}: L{None} when they all had one,
        otherwise the limiter that had none (which counts it in its
        L{refused}; the later ones are not asked).
        """
        # An IPv4 address is its own key; any other is looked up (keyOf,
        # with its cache lookup inline).
        key: ClientKey | None
        if ":" in host:
            key = self._keys.get(host)
            if key is None:
                key = self.keyOf(host)
        else:
            key = host
        limiter = self
        while True:
            arrivals = limiter._arrivals
            tat = arrivals.get(key)
            if tat is None:
                if len(arrivals) >= limiter.maxClients:
                    del arrivals[limiter._order.popleft()]
                    limiter.evictions += 1
                arrivals[key] = now + limiter.interval
                limiter._order.append(key)
            elif tat <= now:
                # Idle since its last request: a full bucket.
                arrivals[key] = now + limiter.interval
            else:
                ahead = tat - now
                if ahead <= limiter._tolerance:
                    # Within the burst.
                    arrivals[key] = tat + limiter.interval
                elif ahead > limiter._horizon:
                    # Only a clock stepped backwards puts an arrival this far
                    # ahead: the client is not locked out for the size of
                    # the step.
                    arrivals[key] = now + limiter.interval
                else:
                    limiter.refused += 1
                    return limiter
            then = limiter.then
            if then is None:
                return None
            limiter = then
            key = EVERYONE


EVERYONE: Final = ""
"""The key of the bucket that every client of a L{RateLimiter} shares."""


class SourceLimiter:
    """
    The per-client rate limits of a service: a L{RateLimiter}'s buckets by
    client, with verdicts.

    Optionally, a fraction C{leak} of the requests over a client's limit
    are answered anyway, picked at random, as chrony's C{ratelimit leak}:
    requests forged in a client's name then cannot cut it off, whatever
    their rate (a forger draws one answer in C{1 / leak} to the victim; for
    a protocol whose replies are no larger than its requests, as NTP's).
    And some limited requests are marked L{KISS}: at most one per client per
    C{kodInterval} seconds and C{kodRate} per second overall.

    @ivar buckets: the clients' buckets.
    @ivar leak: the fraction of limited requests answered anyway.
    @ivar leaked: requests answered so far because of L{leak}.
    @ivar random: gives a number in [0, 1) per limited request, which
        decides whether it leaks.
    """

    __slots__ = (
        "_kodLimit",
        "_kodNext",
        "buckets",
        "kodInterval",
        "leak",
        "leaked",
        "random",
    )

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        maxClients: int = DEFAULT_MAX_CLIENTS,
        ipv6Prefix: int = DEFAULT_IPV6_PREFIX,
        kodInterval: float = 0.0,
        kodRate: float = DEFAULT_KOD_RATE,
        leak: float = 0.0,
        random: Callable[[], float] = random.random,
    ) -> None:
        """
        @param rate: sustained requests per second for one client.
        @param burst: requests one client may send back to back.
        @param maxClients: the table's bound (at least 1).
        @param ipv6Prefix: prefix length grouping IPv6 clients (1-128).
        @param kodInterval: seconds between two L{KISS} verdicts for one
            client; 0 for none at all.
        @param kodRate: L{KISS} verdicts per second over all clients.
        @param leak: the fraction of limited requests answered anyway, from
            0 to L{MAX_LEAK}.
        @param random: the source of the leak's random numbers.
        @raise ValueError: a parameter is out of range.
        """
        if not 0.0 <= leak <= MAX_LEAK:
            raise ValueError(f"leak must be from 0 to {MAX_LEAK}, not {leak}")
        self.leak = leak
        self.leaked = 0
        self.random = random
        self.buckets = RateLimiter(rate, burst, maxClients, ipv6Prefix)
        if kodInterval < 0:
            raise ValueError(f"kodInterval must not be negative, not {kodInterval}")
        self.kodInterval = kodInterval
        self._kodNext: dict[ClientKey, float] = {}
        self._kodLimit = (
            RateLimiter(kodRate, max(1, int(kodRate))) if kodInterval else None
        )

    @property
    def rate(self) -> float:
        """
        Sustained requests per second for one client.
        """
        return self.buckets.rate

    @property
    def burst(self) -> int:
        """
        Requests one client may send back to back.
        """
        return self.buckets.burst

    @property
    def maxClients(self) -> int:
        """
        The bound of the clients' table.
        """
        return self.buckets.maxClients

    @property
    def ipv6Prefix(self) -> int:
        """
        The prefix length grouping IPv6 clients.
        """
        return self.buckets.ipv6Prefix

    @property
    def evictions(self) -> int:
        """
        Clients evicted from the table so far.
        """
        return self.buckets.evictions

    def __len__(self) -> int:
        """
        The number of clients in the table.
        """
        return len(self.buckets)

    def clientKey(self, host: str) -> ClientKey:
        """
        The table key of a source address as Twisted reports it.
        """
        return self.buckets.clientKey(host)

    def admit(self, host: str, now: float) -> Verdict:
        """
        The verdict for a request from C{host} at time C{now}: L{ADMIT}
        (taking a token), L{LIMITED} or L{KISS}.
        """
        refuser = self.buckets.take(host, now)
        if refuser is None:
            return ADMIT
        return self.refusal(host, now) if refuser is self.buckets else LIMITED

    def refusal(self, host: str, now: float) -> Verdict:
        """
        The verdict for a request from C{host} at time C{now} that its
        bucket refused: L{ADMIT} for a fraction L{leak} of them, picked at
        random (within the shared cap the buckets are chained to, if any),
        L{KISS} for one now and then (see C{kodInterval}), L{LIMITED} for
        the others.
        """
        leak = self.leak
        if leak and self.random() < leak:
            then = self.buckets.then
            if then is None or then.take(EVERYONE, now) is None:
                self.leaked += 1
                return ADMIT
            return LIMITED
        kodLimit = self._kodLimit
        if kodLimit is None:
            return LIMITED
        key = self.buckets.keyOf(host)
        kodNext = self._kodNext
        due = kodNext.get(key)
        if due is not None and 0.0 < due - now <= self.kodInterval:
            return LIMITED
        if not kodLimit.admit(now):
            return LIMITED
        if len(kodNext) >= _KOD_TABLE_SIZE:
            kodNext.clear()
        kodNext[key] = now + self.kodInterval
        return KISS


class AccessList:
    """
    Allow/deny rules over networks, as chrony's C{allow}/C{deny}: the most
    specific network that contains the source decides; between rules for the
    same network the later one wins.  A source no rule matches is allowed
    when there is no allow rule at all, and denied otherwise (so one
    C{allow} turns the list into an allow list).  IPv4-mapped IPv6 sources
    match IPv4 rules.

    Decisions are cached per source address (a bounded cache, emptied when
    full), so the common path is one dictionary lookup.

    @ivar default: the decision for a source no rule matches.
    """

    def __init__(self, rules: Iterable[tuple[bool, Network]]) -> None:
        """
        @param rules: C{(allow, network)} pairs, in the order given.
        """
        self._decisions: dict[tuple[int, int, int], bool] = {}
        lengths: dict[int, set[int]] = {4: set(), 6: set()}
        anyAllow = False
        for allow, given in rules:
            network = _unmapNetwork(given)
            bits = network.max_prefixlen - network.prefixlen
            key = (
                network.version,
                network.prefixlen,
                int(network.network_address) >> bits,
            )
            self._decisions[key] = allow
            lengths[network.version].add(network.prefixlen)
            anyAllow = anyAllow or allow
        self.default = not anyAllow
        self._lengths = {
            version: sorted(found, reverse=True) for version, found in lengths.items()
        }
        self._cache: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        """
        Whether requests from C{host} (an address as Twisted reports it) are
        served.
        """
        cache = self._cache
        decision = cache.get(host)
        if decision is None:
            decision = self._decide(host)
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[host] = decision
        return decision

    def _decide(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        value = int(address)
        version = address.version
        maxBits = address.max_prefixlen
        decisions = self._decisions
        for length in self._lengths[version]:
            found = decisions.get((version, length, value >> (maxBits - length)))
            if found is not None:
                return found
        return self.default


def _unmapNetwork(network: Network) -> Network:
    """
    An IPv4-mapped IPv6 network (inside C{::ffff:0:0/96}) as the IPv4
    network it stands for; any other network unchanged.
    """
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.network_address.ipv4_mapped is not None
    ):
        return ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
        )
    return network


@dataclass(frozen=True, slots=True)
class AccessRule:
    """
    One allow or deny rule.

    @ivar allow: allow (C{True}) or deny (C{False}).
    @ivar network: the source network it applies to.
    @ivar service: the service it applies to, or L{None} for every service.
    """

    allow: bool
    network: Network
    service: str | None = None

    @classmethod
    def parse(cls, allow: bool, text: str) -> list[AccessRule]:
        """
        Parse a command-line rule: C{[SERVICE=]NETWORK}, where NETWORK is an
        address, a CIDR network (C{192.0.2.0/24}, C{2001:db8::/32}) or
        C{all} (every IPv4 and IPv6 address).

        @raise ValueError: the text is not a rule.
        """
        service, sep, spec = text.partition("=")
        if not sep:
            service, spec = "", text
        service = service.strip().lower()
        spec = spec.strip()
        if sep and not service:
            raise ValueError(f"no service name before '=' in {text!r}")
        if spec.lower() == "all":
            networks: list[Network] = [
                ipaddress.IPv4Network("0.0.0.0/0"),
                ipaddress.IPv6Network("::/0"),
            ]
        else:
            try:
                networks = [ipaddress.ip_network(spec, strict=False)]
            except ValueError:
                raise ValueError(
                    f"{spec!r} is not an address, a CIDR network or 'all'"
                ) from None
        return [cls(allow, network, service or None) for network in networks]


class ReplyMemory:
    """
    What a service sent to each peer lately: the loop guard of a service
    that answers any datagram (text, Time, Daytime, Echo).

    Two such services answer each other for ever once a forged datagram
    starts them, one loop per datagram injected, and with no rate limit
    (C{--rate 0}) as fast as they can.  The memory holds, for every reply
    sent in the last C{window} seconds, its peer (address and port) and a
    digest of its bytes; a datagram from a peer answered within the window
    is a loop (L{isLoop}) when it is one of those replies coming back (an
    echo service sent it back) or has the shape of a reply
    (C{looksLikeReply}, by default L{udptime.replyshapes.looksLikeReply}:
    another udptime answered).  So a loop dies within two or three
    datagrams, however many are injected.

    Bounded in time and in count: the replies are kept in two generations
    of at most C{size / 2} replies and one window each; the older is
    forgotten as a whole when the newer is full or a window old.  So a reply
    is remembered for at least one window, unless the service sends more
    than C{size / 2} replies in a window: then for the time of at least
    C{size / 2} replies.

    A client that sends, within the window, the very bytes it was just
    sent, or a datagram shaped like a reply, is refused as a loop; clients
    of these protocols send neither (a request word, an empty datagram, a
    random token).

    Only a service whose replies repeat its requests (Echo) needs the
    replies' bytes: the replies of the others have the shape of a reply
    wherever they come back from.  Without C{contents}, the memory keeps the
    peers alone, and asks about the shape first, which rejects an ordinary
    request at once: the guard then costs a text or Time request little
    more than one table store.

    @ivar window: seconds a reply is remembered.
    @ivar size: the most replies remembered.
    @ivar contents: whether the replies' bytes are remembered, not only
        their peers.
    @ivar looksLikeReply: whether a datagram, received at a time, has the
        shape of a reply.
    """

    __slots__ = (
        "_half",
        "_oldPeers",
        "_oldSent",
        "_peers",
        "_rotateAt",
        "_sent",
        "contents",
        "looksLikeReply",
        "size",
        "window",
    )

    def __init__(
        self,
        window: float = DEFAULT_LOOP_WINDOW,
        size: int = DEFAULT_LOOP_MEMORY,
        looksLikeReply: Callable[[bytes, float], bool] | None = None,
        contents: bool = True,
    ) -> None:
        """
        @param window: seconds a reply is remembered (positive).
        @param size: the most replies remembered (at least 2).
        @param contents: remember the replies' bytes, not only their peers.
        @param looksLikeReply: L{None} for
            L{udptime.replyshapes.looksLikeReply}.
        @raise ValueError: a parameter is out of range.
        """
        if not window > 0.0:
            raise ValueError(f"window must be positive, not {window}")
        if size < 2:
            raise ValueError(f"size must be at least 2, not {size}")
        if looksLikeReply is None:
            looksLikeReply = replyshapes.looksLikeReply
        self.window = window
        self.size = size
        self.looksLikeReply = looksLikeReply
        self.contents = contents
        # Two generations, each of at most half the size and spanning at
        # most a window: the current one, and the one before, forgotten as
        # a whole when the current one is full or a window old.  Each entry
        # holds the time it was sent, which decides.
        self._half = size // 2
        self._sent: dict[tuple[tuple[str, int], int], float] = {}
        self._peers: dict[tuple[str, int], float] = {}
        self._oldSent: dict[tuple[tuple[str, int], int], float] = {}
        self._oldPeers: dict[tuple[str, int], float] = {}
        self._rotateAt = -math.inf

    def __len__(self) -> int:
        """
        The number of replies remembered.
        """
        if not self.contents:
            return len(self._peers) + len(self._oldPeers)
        return len(self._sent) + len(self._oldSent)

    def isLoop(self, addr: tuple[str, int], data: bytes, now: float) -> bool:
        """
        Whether C{data} from C{addr}, received at time C{now}, is a loop: a
        reply sent to C{addr} within the window coming back, or a datagram
        shaped like a reply from a peer answered within the window.
        """
        if not self.contents and not self.looksLikeReply(data, now):
            # Nearly every request, at once.
            return False
        last = self._peers.get(addr)
        if last is None:
            last = self._oldPeers.get(addr)
            if last is None:
                # Not answered lately: nearly every request.
                return False
        if not 0.0 <= now - last <= self.window:
            return False
        if not self.contents:
            return True
        return self.isReturned(addr, data, now) or self.looksLikeReply(data, now)

    def isReturned(self, addr: tuple[str, int], data: bytes, now: float) -> bool:
        """
        Whether C{data} from C{addr} is a reply sent to C{addr} within the
        window, coming back.
        """
        key = (addr, hash(data))
        sent = self._sent.get(key)
        if sent is None:
            sent = self._oldSent.get(key)
            if sent is None:
                return False
        return 0.0 <= now - sent <= self.window

    def remember(self, addr: tuple[str, int], reply: bytes, now: float) -> None:
        """
        Note that C{reply} was sent to C{addr} at time C{now}.
        """
        peers = self._peers
        if now >= self._rotateAt or len(peers) >= self._half:
            self._rotate(now)
            peers = self._peers
        elif now < self._rotateAt - self.window:
            # The clock went back: start afresh from now.
            self._rotate(now)
            peers = self._peers
        peers[addr] = now
        if self.contents:
            sent = self._sent
            sent[(addr, hash(reply))] = now
            if len(sent) >= self._half:
                # Many replies to few peers: the next one starts afresh.
                self._rotateAt = now

    def _rotate(self, now: float) -> None:
        """
        Forget the older generation; the current one becomes it.
        """
        self._oldSent, self._oldPeers = self._sent, self._peers
        self._sent, self._peers = {}, {}
        self._rotateAt = now + self.window


@dataclass(frozen=True)
class PolicyProfile:
    """
    What a protocol declares about the admission policy it needs (see
    L{Policy.fromProfile}).

    @ivar kissOfDeath: requests refused by the rate limits may get a
        refusal reply now and then (an NTP Kiss-o'-Death; see L{KISS}).
    @ivar loopGuard: refuse datagrams from the small services' ports
        (L{SERVICE_PORTS}), from the service's own port and from the
        server's other services' ports: a service that answers any datagram
        must never answer another such service.  Not for NTP, whose
        symmetric peers legitimately send from port 123, and which never
        answers a reply.
    @ivar leak: the protocol's replies are never larger than its requests,
        so that a fraction of the requests over a client's limit may be
        answered anyway (see L{SourceLimiter}): forged requests in a
        client's name then cannot cut it off.
    @ivar replyMemory: remember the replies sent to each peer lately, to
        refuse them, or other replies, coming back (L{ReplyMemory}): for a
        service that answers any datagram.
    @ivar repeatsRequests: its replies are its requests (Echo), so the
        reply memory keeps the replies' bytes, not only their peers.
    """

    kissOfDeath: bool = False
    loopGuard: bool = True
    replyMemory: bool = False
    leak: bool = False
    repeatsRequests: bool = False


class Policy:
    """
    What one service admits: the loop guard, an allow/deny list, per-source
    rate limits and an optional reply cap shared between services.

    @ivar loopPorts: source ports refused outright.
    @ivar access: the allow/deny list, or L{None} to allow every source.
    @ivar replyMemory: the L{ReplyMemory} of a service that answers any
        datagram, or L{None}.
    @ivar guardOwnPort: whether L{guardPort} adds the service's own port to
        L{loopPorts}.
    """

    __slots__ = (
        "_buckets",
        "_globalLimit",
        "_limiter",
        "access",
        "guardOwnPort",
        "loopPorts",
        "replyMemory",
    )

    def __init__(
        self,
        *,
        limiter: SourceLimiter | None = None,
        globalLimit: RateLimiter | None = None,
        access: AccessList | None = None,
        loopPorts: Iterable[int] = (),
        guardOwnPort: bool = False,
        replyMemory: ReplyMemory | None = None,
    ) -> None:
        """
        @param limiter: per-source limits, or L{None} for none.
        @param globalLimit: a cap on admitted requests per second (possibly
            shared with other services), or L{None}.  With per-source limits,
            it is chained after them (L{RateLimiter.then}), so that one call
            takes both of a request's tokens.
        """
        self._limiter = limiter
        self._globalLimit = globalLimit
        self._buckets = None if limiter is None else limiter.buckets
        if self._buckets is not None:
            self._buckets.then = globalLimit
        self.access = access
        # Port 0 cannot be answered: refused whatever else is configured.
        self.loopPorts = frozenset({0, *loopPorts})
        self.guardOwnPort = guardOwnPort
        self.replyMemory = replyMemory

    @property
    def limiter(self) -> SourceLimiter | None:
        """
        The per-source limits, or L{None} for none.
        """
        return self._limiter

    @property
    def globalLimit(self) -> RateLimiter | None:
        """
        The cap on admitted requests per second (possibly shared with other
        services), or L{None}.
        """
        return self._globalLimit

    @classmethod
    def fromProfile(
        cls,
        profile: PolicyProfile,
        *,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        maxClients: int = DEFAULT_MAX_CLIENTS,
        ipv6Prefix: int = DEFAULT_IPV6_PREFIX,
        rules: Sequence[tuple[bool, Network]] = (),
        globalLimit: RateLimiter | None = None,
        serverPorts: Iterable[int] = (),
        leak: float = DEFAULT_LEAK,
        random: Callable[[], float] = random.random,
    ) -> Policy:
        """
        The policy udptime's twistd plugin gives a service whose protocol
        declares C{profile} (see L{PolicyProfile} and
        L{udptime.services}).

        @param rate: per-source requests per second; 0 turns per-source
            limits off.
        @param rules: the service's allow/deny rules, C{(allow, network)}
            in the order given.
        @param serverPorts: the ports of all the services of the server
            this one is part of: a service with the loop guard answers no
            datagram from them, so that no two of the server's services can
            answer each other.
        @param leak: the fraction of the requests over a client's limit
            answered anyway, for a profile that allows it (see
            L{PolicyProfile.leak}); ignored for the others.
        @param random: the source of the leak's random numbers.
        """
        limiter = None
        if rate:
            limiter = SourceLimiter(
                rate,
                burst,
                maxClients,
                ipv6Prefix,
                kodInterval=DEFAULT_KOD_INTERVAL if profile.kissOfDeath else 0.0,
                leak=leak if profile.leak else 0.0,
                random=random,
            )
        return cls(
            limiter=limiter,
            globalLimit=globalLimit,
            access=AccessList(rules) if rules else None,
            loopPorts=SERVICE_PORTS.union(serverPorts) if profile.loopGuard else (),
            guardOwnPort=profile.loopGuard,
            replyMemory=(
                ReplyMemory(contents=profile.repeatsRequests)
                if profile.replyMemory
                else None
            ),
        )

    def guardPort(self, port: int) -> None:
        """
        Refuse datagrams from the service's own port C{port} (a loop with a
        copy of the service elsewhere, or with itself), if so configured.
        """
        if self.guardOwnPort:
            self.loopPorts = self.loopPorts | {port}

    def admit(self, addr: tuple[str, int], now: float) -> Verdict:
        """
        The verdict (L{ADMIT}, L{LOOPED}, L{DENIED}, L{LIMITED} or L{KISS})
        for a datagram from C{addr} at time C{now}.
        """
        host, port = addr
        if port in self.loopPorts:
            return LOOPED
        access = self.access
        if access is not None and not access.allows(host):
            return DENIED
        buckets = self._buckets
        if buckets is not None:
            # The limiter's buckets, chained to the global cap, if any (see
            # __init__).
            refuser = buckets.take(host, now)
            if refuser is not None:
                if refuser is buckets:
                    assert self._limiter is not None
                    return self._limiter.refusal(host, now)
                return LIMITED
        else:
            limit = self._globalLimit
            if limit is not None and limit.take(EVERYONE, now) is not None:
                return LIMITED
        return ADMIT

    def stats(self) -> dict[str, int]:
        """
        Gauges for reports: clients in the per-source table, entries
        evicted from it so far, and, for a service that leaks (see
        L{SourceLimiter}), the requests over the limits answered anyway.
        """
        limiter = self._limiter
        if limiter is None:
            return {"clients": 0, "evicted": 0}
        stats = {"clients": len(limiter), "evicted": limiter.evictions}
        if limiter.leak:
            stats["leaked"] = limiter.leaked
        return stats
