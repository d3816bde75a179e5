"""
Roughtime's cost in-process (no sockets): one Ed25519 signature, and the
server's CPU time per request through L{udptime.roughtime.respondBatch} for
batches of 1, 16, 64 and 128 requests.

    python bench/roughtime.py [--count N]

Prints microseconds per operation, best of three rounds of C{count} batches
(or C{count} operations): signing and verifying one SREP with Ed25519;
reading a request in full (the general reading, for a request of a shape
not met before) and hashing its Merkle leaf; the whole batch per request,
and the part of it that is not the batch's one signature, with the request
shapes met kept from batch to batch as the server keeps them; a batch of
version 1 and draft 11 requests mixed (two signatures); and a client's
verification of one response (two signature checks).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from udptime import roughtime as rt

NOW = 1_800_000_000.25
BATCHES = (1, 16, 64, 128)


def perCall(count: int, loop: Callable[[int], None], per: int = 1) -> float:
    """
    Microseconds per item of C{loop(count)}, which handles C{per} items per
    iteration, best of three.
    """
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        loop(count)
        best = min(best, (time.perf_counter_ns() - start) / count / per / 1000)
    return best


def row(name: str, microseconds: float, note: str = "") -> None:
    print(f"{name:44} {microseconds:7.1f} µs{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    count = parser.parse_args().count
    longTerm = Ed25519PrivateKey.generate()
    online = Ed25519PrivateKey.generate()
    delegation = rt.makeDelegation(longTerm, online, int(NOW) - 60, int(NOW) + 86400)
    public = longTerm.public_key().public_bytes_raw()
    srep = rt.encodeMessage(
        {
            rt.VER: b"\1\0\0\0",
            rt.RADI: b"\3\0\0\0",
            rt.MIDP: bytes(8),
            rt.VERS: rt.packVersions(rt.SERVER_VERSIONS),
            rt.ROOT: bytes(32),
        }
    )
    message = rt.RFC_RESPONSE_CONTEXT + srep
    signature = online.sign(message)
    onlinePublic = online.public_key()

    def sign(n: int) -> None:
        for _ in range(n):
            online.sign(message)

    def verify(n: int) -> None:
        for _ in range(n):
            onlinePublic.verify(signature, message)

    row(f"Ed25519 sign (SREP, {len(message)} bytes)", perCall(count, sign))
    row("Ed25519 verify", perCall(count, verify))

    requests = [rt.buildRequest(public).packet for _ in range(max(BATCHES))]
    srv = delegation.srv

    def parse(n: int) -> None:
        for i in range(n):
            packet = requests[i % len(requests)]
            parsed = rt.parseRequest(packet, srv)
            assert isinstance(parsed, rt.Request)
            parsed.version.leaf(packet, parsed.nonce)

    row("read a request in full and hash its leaf", perCall(count, parse))

    signCost = perCall(count, sign)
    # The shapes of the requests met, as the server keeps them from batch to
    # batch: its requests are then read by comparing bytes.
    shapes = rt.RequestShapes()
    for size in BATCHES:
        batch = requests[:size]
        rounds = max(1, count * 16 // size // 16)

        def respond(n: int, batch: list[bytes] = batch) -> None:
            for _ in range(n):
                rt.respondBatch(batch, NOW, 3, delegation, None, shapes)

        each = perCall(rounds, respond, size)
        rest = max(each - signCost / size, 0.0)
        row(
            f"respondBatch, batch of {size}",
            each,
            f" per request ({rest:.1f} without the signature)",
        )

    mixed = [rt.buildRequest(public, (v,)).packet for v in (1, 0x8000000B) * 32]

    def respondMixed(n: int) -> None:
        for _ in range(n):
            rt.respondBatch(mixed, NOW, 3, delegation, None, shapes)

    each = perCall(max(1, count // 64), respondMixed, len(mixed))
    row("respondBatch, 64 mixed (version 1, draft 11)", each, " per request")

    request = rt.buildRequest(public)
    (response,) = rt.respondBatch([request.packet], NOW, 3, delegation)
    assert response is not None

    def check(n: int) -> None:
        for _ in range(n):
            rt.verifyResponse(request, response, public)

    row("client: verifyResponse", perCall(count, check))


if __name__ == "__main__":
    main()
