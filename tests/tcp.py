"""
Free TCP ports on loopback.
"""

from __future__ import annotations

import socket


def freeTCPPort(host: str = "127.0.0.1") -> int:
    """
    A TCP port that is free on C{host} right now.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port
