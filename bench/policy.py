"""
The admission policy's cost per datagram, in-process (no sockets).

    python bench/policy.py [--count N]

Prints nanoseconds per call of L{udptime.policy.Policy.admit} for: a known
client (the common path), a flooding client (the refused path), new clients
while the table has room, new clients while the table is full (every call
evicts), IPv4-mapped and IPv6 clients, and with an allow/deny list; then
the whole path of a datagram (L{udptime.replies.ReplyPath.handle} with the
time service, sending nowhere) with and without a policy.  A forged-source
flood should cost no more per datagram with a full table than with an empty
one.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from udptime.policy import AccessRule
from udptime.replies import ReplyPath
from udptime.server import TimeServer
from udptime.services import SERVICES

NOW = 1_800_000_000.0


def sendNowhere(data: bytes, addr: object) -> None:
    pass


def perCall(count: int, loop: Callable[[int], None]) -> float:
    """
    Nanoseconds per iteration of C{loop(count)}, best of three.
    """
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        loop(count)
        best = min(best, (time.perf_counter_ns() - start) / count)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    count = parser.parse_args().count
    hosts = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(3 * count)]
    mapped = [f"::ffff:{host}" for host in hosts[:count]]
    ipv6 = [f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1" for i in range(count)]

    def known(n: int) -> None:
        policy = SERVICES["time"].policy(rate=1e9, burst=10**9)
        admit = policy.admit
        addr = ("192.0.2.1", 40000)
        for i in range(n):
            admit(addr, NOW + i * 1e-6)

    def flooding(n: int) -> None:
        policy = SERVICES["time"].policy()
        admit = policy.admit
        addr = ("192.0.2.1", 40000)
        for i in range(n):
            admit(addr, NOW + i * 1e-6)

    def fresh(names: list[str], maxClients: int) -> Callable[[int], None]:
        def loop(n: int) -> None:
            policy = SERVICES["time"].policy(maxClients=maxClients)
            admit = policy.admit
            for i in range(n):
                admit((names[i], 40000), NOW)

        return loop

    def withRules(n: int) -> None:
        rules = [
            (rule.allow, rule.network)
            for rule in AccessRule.parse(False, "192.0.2.0/24")
            + AccessRule.parse(True, "10.0.0.0/8")
        ]
        policy = SERVICES["time"].policy(rate=1e9, burst=10**9, rules=rules)
        admit = policy.admit
        addr = ("10.1.2.3", 40000)
        for i in range(n):
            admit(addr, NOW + i * 1e-6)

    def protocol(withPolicy: bool) -> Callable[[int], None]:
        def loop(n: int) -> None:
            server = TimeServer(
                policy=SERVICES["time"].policy(rate=1e9, burst=10**9)
                if withPolicy
                else None
            )
            handle = ReplyPath(server, sendNowhere).handle
            addr = ("192.0.2.1", 40000)
            for i in range(n):
                handle(b"", addr, NOW + i * 1e-6)

        return loop

    rows = [
        ("known client (common path)", known),
        ("flooding client (refused)", flooding),
        ("new clients, table has room", fresh(hosts, 10 * count)),
        ("new clients, table full (evicts)", fresh(hosts, 1000)),
        ("new IPv4-mapped clients, full", fresh(mapped, 1000)),
        ("new IPv6 clients (/64), full", fresh(ipv6, 1000)),
        ("known client, allow/deny list", withRules),
        ("time service, no policy", protocol(False)),
        ("time service, policy", protocol(True)),
    ]
    for name, loop in rows:
        print(f"{name:36} {perCall(count, loop):8.0f} ns")


if __name__ == "__main__":
    main()
