"""
udptime: a concurrent UDP time service built on Twisted.

The package is layered: codecs (L{udptime.text}, ...) are pure functions with
no I/O; L{udptime.clock} is the one place that reads the clock; the
protocols in L{udptime.server} adapt codecs to Twisted; L{udptime.tap} builds
the twistd service; L{udptime.client} queries servers.
"""

__version__ = "0.1.0"
