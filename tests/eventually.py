"""
Waiting, under a running reactor, for what another part of the same
process does in its own time (a server's counters after its side of a
connection closed): polling with a deadline, never a bare sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.task import deferLater


async def eventually(
    check: Callable[[], object], what: str, timeout: float = 10.0
) -> None:
    """
    Return once C{check()} is true, polling every 10 ms on the global
    reactor for at most C{timeout} seconds.

    @raise AssertionError: C{what} did not happen in time.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
