"""
A cap on the distinct time zones the text service answers in per second.

A reply in a zone is cheap when that zone was answered in lately: its text
for the current second is made once and kept (see L{udptime.text}).  A
client that names a different zone in each request (there are about 600)
defeats those caches, and each reply then costs several times as much.
L{ZoneLimit} bounds that cost for the whole service, whatever the sources:
in each second (of the requests' receive times) the first C{perSecond}
distinct zones named are answered, as often as they are asked for; a
request naming another zone in that second is refused (answered with
L{REFUSAL_TEXT}).  Requests that name no zone are never refused.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Final

DEFAULT_ZONES_PER_SECOND: Final = 64
"""
Distinct zones answered in per second by default: far more than the zones
a service's clients name in one second, and few enough that their replies'
text, made once a second per zone, costs little.
"""

REFUSAL_TEXT: Final = "too many time zones asked for this second, try again"
"""What follows C{error: } in the reply to a request over the cap."""


class ZoneLimit:
    """
    At most L{perSecond} distinct zones in each second of receive time.

    @ivar perSecond: distinct zones admitted per second (at least 1).
    @ivar refused: requests refused so far.
    """

    __slots__ = ("_second", "_zones", "perSecond", "refused")

    def __init__(self, perSecond: int = DEFAULT_ZONES_PER_SECOND) -> None:
        """
        @param perSecond: distinct zones admitted per second (at least 1).
        @raise ValueError: C{perSecond} is less than 1.
        """
        if perSecond < 1:
            raise ValueError(f"at least one zone per second, not {perSecond}")
        self.perSecond = perSecond
        self.refused = 0
        self._second = -1
        self._zones: set[tzinfo] = set()

    def admit(self, zone: tzinfo, now: float) -> bool:
        """
        Whether a request naming C{zone}, received at Unix time C{now}, may
        be answered: C{zone} was already answered in this second, or fewer
        than L{perSecond} zones were.  A refusal is counted.
        """
        second = now.__floor__()
        zones = self._zones
        if second != self._second:
            self._second = second
            zones.clear()
        elif zone in zones:
            return True
        if len(zones) >= self.perSecond:
            self.refused += 1
            return False
        zones.add(zone)
        return True
