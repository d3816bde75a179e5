"""
A first end-to-end check: a real twistd process answers a plain datagram.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.support import TwistdServer, freePort, udpQuery


class SmokeTests(SynchronousTestCase):
    def test_helloWorld(self) -> None:
        port = freePort()
        server = TwistdServer(["--port", str(port), "--timezone", "UTC"])
        self.addCleanup(server.cleanup)
        server.start()
        reply = udpQuery(b"Hello world", "127.0.0.1", port)
        self.assertRegex(reply, rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\n$")
        self.assertEqual(server.stop(), 0)
