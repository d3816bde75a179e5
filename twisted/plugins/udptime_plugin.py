"""
twistd drop-in for udptime: C{twistd -n udptime --port 5000}.

Kept tiny on purpose: it imports nothing from udptime itself and never the
reactor, so scanning plugins stays cheap and C{twistd --reactor=...} works.
"""

from twisted.application.service import ServiceMaker

udptime = ServiceMaker(
    "udptime",
    "udptime.tap",
    "UDP time service: text time, SNTP/NTP, RFC 868 Time, RFC 867 Daytime, "
    "RFC 862 Echo",
    "udptime",
)
