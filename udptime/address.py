"""
Socket addresses as udptime passes them around and shows them.
"""

from __future__ import annotations

Address = tuple[str, int]
"""A datagram's source or destination as Twisted gives it: (host, port)."""


def formatAddress(host: str, port: int) -> str:
    """
    C{host:port} for messages, with an IPv6 host in brackets:
    C{127.0.0.1:5000}, C{[::1]:5000}.
    """
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
