"""
A tiny Twisted program for the socket activation tests: it adopts the
datagram sockets systemd (or C{systemd-socket-activate}) passed with
L{udptime.activation.activatedSockets} and answers every datagram with
C{NAME FAMILY DATA}, where NAME is the socket's service name.  Run as
C{python activated_server.py}; it exits on SIGTERM.
"""

from __future__ import annotations

import socket
import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

from udptime.activation import ActivationError, activatedSockets


class Answer(DatagramProtocol):
    def __init__(self, name: str, family: socket.AddressFamily) -> None:
        self.prefix = f"{name} {family.name} ".encode("ascii")

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        assert self.transport is not None
        self.transport.write(self.prefix + datagram, addr)


def main() -> int:
    try:
        adopted = activatedSockets()
    except ActivationError as e:
        sys.stderr.write(f"activated_server: {e}\n")
        return 1
    if not adopted:
        sys.stderr.write("activated_server: no socket passed\n")
        return 1
    for name, sockets in adopted.items():
        for each in sockets:
            sock = each.socket
            reactor.adoptDatagramPort(  # type: ignore[attr-defined]
                sock.fileno(), sock.family, Answer(name, sock.family)
            )
            sock.close()  # the port has its own descriptor
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
