"""
udptime's services from a .tac file, without the udptime plugin:

    twistd -n --pidfile= -y udptime.tac

The text protocol on port 5001 and SNTP/NTP on port 11123 of 127.0.0.1, each
behind the admission policy that "twistd udptime" gives it.  The NTP server
vouches for this host's clock at stratum 10, as chrony's "local stratum 10"
does: without that, on a host whose kernel says the clock is not
synchronised, its replies say so and strict clients refuse them.
"""

from twisted.application import service
from twisted.internet import reactor

from udptime.clock import ClockSource
from udptime.ancillary import kernelTimestampsAvailable
from udptime.server import NTPServer, TextTimeServer
from udptime.service import UDPListenService
from udptime.services import SERVICES

INTERFACE = "127.0.0.1"
TEXT_PORT = 5001
NTP_PORT = 11123

# No service but NTP answers a datagram from one of the server's own ports.
PORTS = [TEXT_PORT, NTP_PORT]

application = service.Application("udptime")
services = service.IServiceCollection(application)

text = TextTimeServer(policy=SERVICES["text"].policy(serverPorts=PORTS))
UDPListenService(
    reactor, text, TEXT_PORT, INTERFACE, serviceName="text"
).setServiceParent(services)

ntp = NTPServer(
    clockSource=ClockSource(localStratum=10, refid=b"LOCL"),
    policy=SERVICES["ntp"].policy(serverPorts=PORTS),
)
UDPListenService(
    reactor,
    ntp,
    NTP_PORT,
    INTERFACE,
    serviceName="ntp",
    # Receive times from the kernel, as "twistd udptime" takes them.
    kernelTimestamps=kernelTimestampsAvailable(),
).setServiceParent(services)
