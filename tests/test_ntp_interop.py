"""
udptime's SNTP/NTP service against real NTP clients, and udptime's NTP
client against udptime and against chronyd, all on loopback with real
C{twistd} processes:

  - C{chronyd -Q} (the strictest client: RFC 5905 tests 1-7 and chrony's
    A-D, read from its raw measurement log), Python's C{ntplib} (v4 and v3),
    C{rdate -n} and ntpsec's C{ntpdig} (on port 123 in a private network
    namespace, as it has no port option) accept a server with
    C{--local-stratum 10} exactly as they accept chronyd;
  - without C{--local-stratum}, on a kernel that says its clock is
    unsynchronised, the server says so (LI 3, stratum 0) and the strict
    clients refuse it;
  - udptime's client agrees with chronyd, run as a reference server with
    C{local stratum 10}, on the offset of the same clock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

import ntplib
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.support import (
    TwistdServer,
    freePort,
    missing,
    requirePeer,
    twistdPath,
    udpQuery,
    udptimePath,
)
from udptime.client import query
from udptime.clock import readKernelClock
from udptime.ntp import NTPClientCodec, NTPPacket
from udptime.reading import QueryResult

LOCAL_STRATUM = "10"
CHRONYD_TIMEOUT = 10
"""chronyd -Q gives up after this many seconds (it answers in well under
one when it accepts the server)."""
CHRONYD_REJECT_TIMEOUT = 3
"""chronyd -Q's deadline when the server is expected to be refused."""


def ntpRequest(version: int = 4) -> bytes:
    """
    A client request with a random transmit timestamp, as chronyd sends.
    """
    return bytes([(version << 3) | 3]) + bytes(39) + os.urandom(8)


def startServer(*arguments: str) -> tuple[TwistdServer, int]:
    """
    A C{twistd udptime} with only its NTP service, on a free port.
    """
    port = freePort()
    server = TwistdServer(["--port", "0", "--ntp-port", str(port), *arguments])
    server.startOrCleanUp()
    return server, port


def kernelUnsynchronised() -> None:
    """
    Skip unless this kernel says its clock is unsynchronised: the only way
    to see an unsynchronised server without touching the clock.
    """
    state = readKernelClock()
    if state is not None and state.synchronised:
        raise SkipTest(
            "this kernel's clock is synchronised, so a server that follows "
            "it is too; the unsynchronised case needs an unsynchronised kernel"
        )


class Chronyd:
    """
    Runs C{chronyd -Q} (measure once, never touch the clock) against one
    server and reads its raw measurement log.
    """

    def __init__(self, host: str, port: int, timeout: int) -> None:
        self.path = requirePeer("chronyd", "chronyd -Q checks the NTP server")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.directory = tempfile.mkdtemp(prefix="udptime-chronyd-")
        os.chmod(self.directory, 0o777)

    def run(self) -> subprocess.CompletedProcess[str]:
        user = ["-u", "root"] if os.geteuid() == 0 else []
        return subprocess.run(
            [
                self.path,
                "-Q",
                "-x",
                *user,
                "-t",
                str(self.timeout),
                f"server {self.host} port {self.port} iburst maxsamples 1",
                f"logdir {self.directory}",
                "log rawmeasurements",
                f"pidfile {self.directory}/chronyd.pid",
            ],
            capture_output=True,
            text=True,
            timeout=self.timeout + 10,
        )

    def measurements(self) -> list[list[str]]:
        """
        The measurement log's samples, each split into its columns: date,
        time, address, leap, stratum, tests 1-3, tests 5-7, tests A-D, local
        and remote poll, score, offset, peer delay and dispersion, root
        delay and dispersion, refid, mode and timestamp sources.
        """
        try:
            with open(os.path.join(self.directory, "measurements.log")) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        return [
            line.split()
            for line in lines
            if line[:1].isdigit()  # not the "====" rules nor the header
        ]

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class SynchronisedServerTests(SynchronousTestCase):
    """
    C{twistd -n udptime --ntp-port PORT --local-stratum 10}, asked by the
    real NTP clients.
    """

    def setUp(self) -> None:
        self.server, self.port = startServer("--local-stratum", LOCAL_STRATUM)
        self.addCleanup(self.server.cleanup)

    def tearDown(self) -> None:
        self.assertEqual(self.server.stop(), 0, self.server.log())

    def chronyd(self, host: str) -> None:
        chronyd = Chronyd(host, self.port, CHRONYD_TIMEOUT)
        self.addCleanup(chronyd.cleanup)
        result = chronyd.run()
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertIn("System clock wrong by", output)
        self.assertIn("(ignored)", output)
        [sample] = chronyd.measurements()
        self.assertEqual(sample[2], host)
        # Leap N(ormal), stratum 10, every RFC 5905 test and chrony's A-D
        # passed, root delay and dispersion 0, refid LOCL, a basic server
        # reply (mode 4).
        self.assertEqual(sample[3:8], ["N", LOCAL_STRATUM, "111", "111", "1111"])
        self.assertEqual(sample[14:18], ["0.000e+00", "0.000e+00", "4C4F434C", "4B"])

    def test_chronydIPv4(self) -> None:
        """
        chronyd -Q takes a sample over IPv4 with every test bit passing,
        and exits 0.
        """
        self.chronyd("127.0.0.1")

    def test_chronydIPv6(self) -> None:
        """
        The same over IPv6.
        """
        self.chronyd("::1")

    def test_ntplib(self) -> None:
        """
        ntplib, version 4 and 3, over 127.0.0.1 and ::1.
        """
        client = ntplib.NTPClient()
        for host in "127.0.0.1", "::1":
            for version in 4, 3:
                with self.subTest(host=host, version=version):
                    stats = client.request(
                        host, version=version, port=self.port, timeout=2
                    )
                    self.assertEqual(stats.version, version)
                    self.assertEqual(stats.mode, 4)
                    self.assertEqual(stats.leap, 0)
                    self.assertEqual(stats.stratum, int(LOCAL_STRATUM))
                    self.assertEqual(stats.ref_id, int.from_bytes(b"LOCL"))
                    # Same host, same clock: they agree to well within 1 s.
                    self.assertLess(abs(stats.offset), 0.5)
                    self.assertGreaterEqual(stats.tx_time, stats.recv_time)

    def test_rdate(self) -> None:
        """
        rdate -n (SNTP) accepts the server over IPv4 and IPv6; -p only
        prints, never sets the clock.
        """
        rdate = requirePeer("rdate")
        for flags, host in (([], "127.0.0.1"), (["-6"], "::1")):
            with self.subTest(host=host):
                result = subprocess.run(
                    [rdate, *flags, "-p", "-v", "-n", "-o", str(self.port), host],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                output = result.stdout + result.stderr
                self.assertEqual(result.returncode, 0, output)
                self.assertRegex(result.stdout, r"\w{3} \w{3} +\d+ \d\d:\d\d:\d\d")
                self.assertIn("adjust local clock by", output)

    def test_rawReply(self) -> None:
        """
        A v4 client request from a plain socket gets a 48-byte reply with
        the stratum, refid, origin and timestamps a client needs.
        """
        request = ntpRequest()
        before = time.time()
        data = udpQuery(request, "127.0.0.1", self.port)
        packet = NTPPacket.fromBytes(data)
        self.assertEqual(len(data), 48)
        self.assertEqual(data[24:32], request[40:48])
        self.assertEqual((packet.leap, packet.version, packet.mode), (0, 4, 4))
        self.assertEqual((packet.stratum, packet.refid), (10, b"LOCL"))
        self.assertLess(packet.precision, -10)
        self.assertNotEqual(packet.referenceTimestamp, 0)
        self.assertLessEqual(packet.referenceTimestamp, packet.receiveTimestamp)
        self.assertGreaterEqual(
            packet.transmitTimestamp >> 32, int(before) + 2_208_988_800 - 1
        )

    def test_udptimeCommand(self) -> None:
        """
        C{udptime -P ntp} prints the server's time, delay, offset, stratum,
        leap and refid.
        """
        result = subprocess.run(
            [udptimePath(), "-P", "ntp", "-p", str(self.port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(
            result.stdout,
            r"^127\.0\.0\.1:\d+  \d{4}-\d\d-\d\dT[\d:.]+\+00:00  delay [\d.]+ ms"
            r"  offset [-+][\d.]+ ms  stratum 10  leap none"
            r"  refid 76\.79\.67\.76 \(LOCL\)\n$",
        )


class UnsynchronisedServerTests(SynchronousTestCase):
    """
    C{twistd -n udptime --ntp-port PORT}, without C{--local-stratum}, on
    this kernel that says its clock is unsynchronised: the server says so,
    and the strict clients refuse it.
    """

    def setUp(self) -> None:
        kernelUnsynchronised()
        server, self.port = startServer()
        self.addCleanup(server.cleanup)

    def test_marked(self) -> None:
        """
        Replies carry LI 3 (alarm) and stratum 0, refid 0 and no reference
        time, with the kernel's 16 s maximum error as root dispersion.
        """
        request = ntpRequest()
        packet = NTPPacket.fromBytes(udpQuery(request, "127.0.0.1", self.port))
        self.assertEqual((packet.leap, packet.stratum), (3, 0))
        self.assertEqual((packet.refid, packet.referenceTimestamp), (bytes(4), 0))
        self.assertEqual(packet.rootDispersion, 16 << 16)
        self.assertEqual(packet.originTimestamp, int.from_bytes(request[40:48]))

    def test_chronydRefuses(self) -> None:
        """
        chronyd -Q logs the samples as unsynchronised (test 6 fails) and
        gives up: exit 1, "Timeout reached".
        """
        chronyd = Chronyd("127.0.0.1", self.port, CHRONYD_REJECT_TIMEOUT)
        self.addCleanup(chronyd.cleanup)
        result = chronyd.run()
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertIn("Timeout reached", output)
        self.assertNotIn("System clock wrong by", output)
        samples = chronyd.measurements()
        self.assertGreaterEqual(len(samples), 1)
        for sample in samples:
            self.assertEqual(sample[3:5], ["?", "0"])
            self.assertEqual(sample[5], "111")
            self.assertEqual(sample[6][1], "0")  # test 6: unsynchronised

    def test_rdateRefuses(self) -> None:
        """
        rdate -n ignores a server with the alarm flag set and fails.
        """
        rdate = requirePeer("rdate")
        result = subprocess.run(
            [rdate, "-p", "-v", "-n", "-o", str(self.port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("alarm flag", result.stderr)

    def test_ntplibSees(self) -> None:
        """
        ntplib accepts anything, but reports LI 3 and stratum 0.
        """
        stats = ntplib.NTPClient().request(
            "127.0.0.1", version=4, port=self.port, timeout=2
        )
        self.assertEqual((stats.leap, stats.stratum), (3, 0))


NTPDIG_SCRIPT = """
ip link set lo up || exit 97
"$TWISTD" -n --pidfile= --logfile="$LOG" udptime --port 0 --ntp-port 123 \
    --interface 127.0.0.1 $SERVER_ARGS &
server=$!
tries=0
until grep -q "service listening on" "$LOG" 2>/dev/null; do
    tries=$((tries + 1))
    if [ $tries -gt 1000 ] || ! kill -0 $server 2>/dev/null; then
        kill $server 2>/dev/null; exit 98
    fi
    sleep 0.02
done
"$NTPDIG" -j -t 2 127.0.0.1
status=$?
kill -TERM $server
wait $server
exit $status
"""
"""
Inside one private network namespace: bring loopback up, start udptime on
127.0.0.1:123, wait (bounded) for its "listening" line, ask ntpdig (query
only: no -S or -s, so the clock is never set), stop the server.
"""


class NtpdigTests(SynchronousTestCase):
    """
    ntpsec's ntpdig has no port option: udptime serves it on port 123 in a
    private network namespace (C{unshare -n}).
    """

    def setUp(self) -> None:
        self.ntpdigPath = requirePeer("ntpdig", "ntpsec's SNTP client")
        self.unshare = requirePeer("unshare", "private network namespaces")
        requirePeer("ip", "iproute2 brings loopback up in the namespace")
        probe = subprocess.run(
            [self.unshare, "-n", "true"], capture_output=True, text=True, timeout=10
        )
        if probe.returncode != 0:
            missing(
                "unshare -n is not permitted here (needs root or user "
                f"namespaces): {probe.stderr.strip()}"
            )

    def ntpdig(self, *serverArguments: str) -> subprocess.CompletedProcess[str]:
        directory = tempfile.mkdtemp(prefix="udptime-ntpdig-")
        self.addCleanup(shutil.rmtree, directory, True)
        env = dict(
            os.environ,
            TWISTD=twistdPath(),
            NTPDIG=self.ntpdigPath,
            LOG=os.path.join(directory, "twistd.log"),
            SERVER_ARGS=" ".join(serverArguments),
        )
        process = subprocess.Popen(
            [self.unshare, "-n", "sh", "-c", NTPDIG_SCRIPT],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            self.fail("ntpdig in a network namespace did not finish")
        self.assertNotIn(process.returncode, (97, 98), stderr)
        return subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )

    def test_accepted(self) -> None:
        """
        ntpdig accepts the server: stratum 10, no leap, a small offset.
        """
        result = self.ntpdig("--local-stratum", LOCAL_STRATUM)
        self.assertEqual(result.returncode, 0, result.stderr)
        answer = json.loads(result.stdout)
        self.assertEqual(answer["stratum"], int(LOCAL_STRATUM))
        self.assertEqual(answer["leap"], "no-leap")
        self.assertEqual(answer["host"], "127.0.0.1")
        self.assertFalse(answer["adjusted"])
        self.assertLess(abs(answer["offset"]), 0.5)

    def test_unsynchronisedRefused(self) -> None:
        """
        ntpdig drops an unsynchronised server's stratum-0 reply.
        """
        kernelUnsynchronised()
        result = self.ntpdig()
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("stratum 0", result.stderr)
        self.assertIn("no eligible servers", result.stderr)


CHRONYD_SERVER_CONFIG = """\
port {port}
bindaddress 127.0.0.1
local stratum {stratum}
allow 127.0.0.1
cmdport 0
pidfile {directory}/chronyd.pid
driftfile {directory}/chronyd.drift
"""


class ReferenceServer:
    """
    chronyd as an NTP server on a loopback port, with C{local stratum 10}
    (or C{stratum}), never touching the clock (C{-x}).
    """

    def __init__(self, stratum: int = 10) -> None:
        self.path = requirePeer("chronyd", "the reference NTP server")
        self.port = freePort()
        self.directory = tempfile.mkdtemp(prefix="udptime-chronyd-server-")
        os.chmod(self.directory, 0o777)
        self.config = os.path.join(self.directory, "chrony.conf")
        with open(self.config, "w") as f:
            f.write(
                CHRONYD_SERVER_CONFIG.format(
                    port=self.port, directory=self.directory, stratum=stratum
                )
            )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """
        Start chronyd and wait (bounded) until it answers.
        """
        user = ["-u", "root"] if os.geteuid() == 0 else []
        with open(os.path.join(self.directory, "stderr"), "wb") as stderr:
            self.process = subprocess.Popen(
                [self.path, "-x", "-d", *user, "-f", self.config],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chronyd exited: {self.stderr()}")
            try:
                udpQuery(ntpRequest(), "127.0.0.1", self.port, timeout=0.2)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                time.sleep(0.02)  # polling, bounded by the deadline
                continue
            return
        raise RuntimeError(f"chronyd did not answer in time: {self.stderr()}")

    def stderr(self) -> str:
        with open(os.path.join(self.directory, "stderr"), errors="replace") as f:
            return f.read()

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class ClientTests(TestCase):
    """
    udptime's NTP client (L{NTPClientCodec} through L{query}) against
    udptime and against chronyd serving the same clock.
    """

    def setUp(self) -> None:
        chronyd = ReferenceServer()
        self.addCleanup(chronyd.cleanup)
        chronyd.start()
        self.chronyd = chronyd
        server, self.port = startServer("--local-stratum", LOCAL_STRATUM)
        self.addCleanup(server.cleanup)

    def ask(self, host: str, port: int, version: int = 4) -> Deferred[QueryResult]:
        from twisted.internet import reactor

        return query(
            reactor,  # type: ignore[arg-type]
            host,
            NTPClientCodec(version),
            port=port,
            timeout=2.0,
            retries=2,
        )

    async def best(self, port: int, samples: int = 4) -> QueryResult:
        """
        Ask C{samples} times and keep the answer with the shortest round
        trip, as an NTP client's clock filter does: a sample delayed on one
        leg (a busy machine) has its offset off by up to half its delay.
        """
        results = [await self.ask("127.0.0.1", port) for _ in range(samples)]
        return min(results, key=lambda result: result.delay)

    async def test_agreeWithChronyd(self) -> None:
        """
        udptime and chronyd, serving the same clock, each give an offset
        within half the round trip (what one clock allows), the same offset
        within 1 ms, and both say stratum 10, no leap, synchronised.
        """
        ours = await self.best(self.port)
        theirs = await self.best(self.chronyd.port)
        assert ours.offset is not None and theirs.offset is not None
        for offset, delay in (ours.offset, ours.delay), (theirs.offset, theirs.delay):
            # One clock: T1 <= T2 <= T3 <= T4, so |theta| <= delta / 2 (plus
            # the servers' sub-precision fuzz and NTP's 2**-32 s rounding).
            self.assertLessEqual(abs(offset), delay / 2 + 1e-5)
        self.assertLess(abs(ours.offset - theirs.offset), 0.001)
        for result in ours, theirs:
            details: dict[str, Any] = result.details
            self.assertEqual(details["stratum"], 10)
            self.assertEqual(details["leapText"], "none")
            self.assertTrue(details["synchronised"])
            self.assertEqual(details["rootDelay"], 0.0)
            self.assertEqual(details["rootDispersion"], 0.0)
        self.assertEqual(ours.details["refid"], "76.79.67.76 (LOCL)")
        self.assertEqual(theirs.details["refid"], "127.127.1.1")  # chrony's local

    async def test_versions(self) -> None:
        """
        udptime answers every version the client can send, over IPv4 and
        IPv6, with that version.
        """
        for host in "127.0.0.1", "::1":
            for version in 1, 2, 3, 4:
                result = await self.ask(host, self.port, version)
                self.assertEqual(result.details["version"], version)
                self.assertTrue(result.details["synchronised"])
                assert result.offset is not None
                self.assertLess(abs(result.offset), 0.5)

    async def test_unsynchronised(self) -> None:
        """
        The client reports an unsynchronised udptime as such.
        """
        kernelUnsynchronised()
        server, port = startServer()
        self.addCleanup(server.cleanup)
        result = await self.ask("127.0.0.1", port)
        self.assertFalse(result.details["synchronised"])
        self.assertEqual(result.details["stratum"], 0)
        self.assertIn("unsynchronised", result.text)
