"""
One authenticated NTS request for the benchmark's load generator to
replay, made with udptime's own client:

    python bench/ntsrequest.py --ke-port K --ntp-port P --ca-file FILE [--check 3]

It makes an NTS key exchange with the NTS-KE server on 127.0.0.1 port
C{K} (trusting the certificates of C{FILE}), builds one NTS request with
a cookie of that exchange (L{udptime.ntsclient.NTSClientCodec}: a unique
identifier, the cookie, an authenticator; no placeholder, as a client with
its cookies in hand sends), then sends that same request C{--check} times
to the NTP server on 127.0.0.1 port C{P} and checks every reply as the
client does (the unique identifier echoed, the authenticator, no NAK).
A server that keeps no state per client answers a replayed request each
time; the load generator then sends it from many source addresses.

Prints one JSON object on stdout: the request (hex), its length, the
replies' length, the replies checked, and what the key exchange
negotiated.  Fails (status 1, one line on stderr) when a step fails.
Only loopback traffic, bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

from twisted.internet import defer, task

from udptime.ntsclient import NTSClientCodec, ntsKeyExchange

HOST = "127.0.0.1"


def checkReplies(
    codec: NTSClientCodec, request: bytes, state: Any, port: int, count: int
) -> list[int]:
    """
    Send C{request} C{count} times to C{HOST:port}, each after the last's
    reply (up to three tries each, a second apart), and check each reply
    with C{codec}.

    @return: the replies' lengths.
    @raise RuntimeError: when a request gets no reply, or a reply is not
        an authentic answer to it.
    """
    lengths = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(1.0)
        for n in range(count):
            for _ in range(3):
                sent = time.time()
                sock.sendto(request, (HOST, port))
                try:
                    reply = sock.recv(2048)
                except TimeoutError:
                    continue
                # raises on a NAK, a bad authenticator, another request's reply
                codec.parseReply(reply, state, sent, time.time())
                lengths.append(len(reply))
                break
            else:
                raise RuntimeError(f"no reply to the request's copy {n + 1}")
    return lengths


async def make(reactor: Any, options: argparse.Namespace) -> None:
    ke = await ntsKeyExchange(
        reactor, HOST, options.ke_port, caFile=options.ca_file, timeout=10.0
    )
    codec = NTSClientCodec(ke)
    request, state = codec.buildRequest(time.time())
    lengths = checkReplies(codec, request, state, options.ntp_port, options.check)
    print(
        json.dumps(
            {
                "request": request.hex(),
                "request_bytes": len(request),
                "reply_bytes": sorted(set(lengths)),
                "checked": len(lengths),
                "negotiated": f"{ke.server}:{ke.port}",
                "cookie_bytes": len(ke.cookies[0]) if ke.cookies else 0,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ke-port", type=int, required=True)
    parser.add_argument("--ntp-port", type=int, required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--check", type=int, default=3)
    options = parser.parse_args()

    def run(reactor: Any) -> defer.Deferred[None]:
        done = defer.Deferred.fromCoroutine(make(reactor, options))

        def failed(reason: Any) -> None:
            print(f"ntsrequest.py: {reason.getErrorMessage()}", file=sys.stderr)
            raise SystemExit(1)

        done.addErrback(failed)
        return done

    task.react(run)


if __name__ == "__main__":
    main()
