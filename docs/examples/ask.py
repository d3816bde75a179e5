"""
Ask the services of udptime.tac for the time, in both protocols:

    python ask.py [HOST [TEXT_PORT [NTP_PORT]]]

Each protocol's client codec lives beside its wire format (udptime.ntp,
udptime.rfc868, udptime.daytime, udptime.echo); the text protocol's is in
udptime.client, with query() itself.
"""

import sys

from twisted.internet import task

from udptime.client import TextClientCodec, query
from udptime.ntp import NTPClientCodec
from udptime.reading import QueryError


async def main(reactor, host="127.0.0.1", textPort="5001", ntpPort="11123"):
    failed = False
    for codec, port in [
        (TextClientCodec("iso UTC"), int(textPort)),
        (NTPClientCodec(), int(ntpPort)),
    ]:
        try:
            result = await query(reactor, host, codec, port=port)
        except QueryError as error:
            print(f"{codec.name}: failed: {error}")
            failed = True
        else:
            line = (
                f"{result.protocol}: {result.text}  "
                f"delay {result.delay * 1000:.3f} ms  "
                f"offset {result.offset * 1000:+.3f} ms"
            )
            if "stratum" in result.details:
                line += f"  stratum {result.details['stratum']}"
            print(line)
    if failed:
        raise SystemExit(1)


task.react(main, sys.argv[1:])
