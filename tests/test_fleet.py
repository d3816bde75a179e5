"""
Many udptime instances behind one address: three real C{twistd -n udptime}
processes, each in a network namespace of its own, behind an nftables UDP
balancer in another, asked by clients in a fourth (see L{tests.balancer}).

The NTS test adds two hosts behind the balancer: an NTS-KE host, reached
through the balancer's address on TCP, and an instance with a key file of
its own (the negative control); C{chronyd -Q} is its client.

Every address here exists only inside namespaces the test creates (and
deletes, even on failure); the namespaces are linked to one another only,
never to the host's.  The balancer's address, L{VIP}, is the only one the
clients send to.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.balancer import (
    FORWARD_CHAIN,
    ROUND_ROBIN,
    SOURCE_HASH,
    TABLE,
    Backend,
    HealthLoop,
    NftablesBalancer,
    forwardingRuleset,
    healthzProbe,
    ntpProbe,
    ruleset,
)
from tests.certificates import makeCertificates
from tests.netns import (
    NetworkNamespace,
    link,
    namespaceNames,
    requireNamespaces,
    uniquePrefix,
)
from tests.support import TwistdServer, requirePeer, waitFor
from udptime.tap import Options

VIP = "10.123.0.1"
"""The balancer's address on the clients' side: the one address clients ask."""

CLIENTS = ("10.123.0.2", "10.123.0.3")
"""Two addresses of the clients' namespace (two clients, as rate limits see)."""

TEXT_PORT = 5000
NTP_PORT = 123
METRICS_PORT = 9123
"""Ports inside the instances' own namespaces (no other program is there)."""


def _optionExists(name: str) -> bool:
    """
    Whether C{twistd udptime} has the long option C{--name}.
    """
    return any(parameter[0] == name for parameter in Options.optParameters)


HEALTH_ENDPOINT = _optionExists("metrics-port")
"""
The switch between the two health probes: once udptime serves C{/healthz}
(C{--metrics-port}), each instance gets a metrics port and the health loop
asks C{/healthz}; until then it asks each instance's NTP service directly.
"""

NTS_KE_PORT = 4460
"""The NTS-KE port, on the balancer's address and on the NTS-KE host."""

KEY_EXCHANGE_HOST = 4
"""The index of the NTS-KE host's namespace (see L{Fleet.addHost})."""

OTHER_KEYS_HOST = 5
"""The index of the namespace of an instance with a key file of its own."""


def backendAddress(index: int) -> str:
    """
    Instance C{index}'s address (1, 2, 3), on a link of its own to the
    balancer, which is C{10.123.index.1} on that link.
    """
    return f"10.123.{index}.2"


def makeKeyFile(path: str) -> None:
    """
    Make a new NTS key file at C{path} with the operator's command,
    C{udptime-nts-keys new}.
    """
    subprocess.run(
        [sys.executable, "-m", "udptime.ntskeys", "new", path],
        check=True,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def measurementSources(logPath: str) -> list[str]:
    """
    The source address of each measurement of a chronyd C{measurements.log}
    (none when there is no log).
    """
    try:
        with open(logPath) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [line.split()[2] for line in lines if re.match(r"\d{4}-\d\d-\d\d ", line)]


def counterTotals(server: TwistdServer, service: str = "text") -> dict[str, int]:
    """
    A service's counters as of the instance's last counter summary in its
    log (C{--summary-interval 1}): C{received}, C{answered}, C{limited}...
    """
    lines = re.findall(rf"udptime {service}: [^;]*; totals ([^;\n]*)", server.log())
    if not lines:
        return {}
    return {k: int(v) for k, v in (pair.split("=") for pair in lines[-1].split())}


class Fleet:
    """
    The namespaces, links, instances and balancer of one test.

    @ivar client: the clients' namespace.
    @ivar balancer: the balancer's namespace, which owns L{VIP}.
    @ivar backends: each instance's namespace, by index 1, 2, 3.
    @ivar others: the namespaces of L{addHost}, by index.
    @ivar servers: each instance's (or host's) C{twistd}, by index.
    @ivar created: the names of the namespaces made, for the leak check.
    """

    def __init__(
        self, case: SynchronousTestCase, arguments: Sequence[str], created: list[str]
    ) -> None:
        """
        @param created: where to note the name of each namespace made.
        """
        self.case = case
        self.ip = requireNamespaces()
        self.nft = requirePeer("nft", "nftables, the balancer")
        self.conntrack = requirePeer("conntrack", "conntrack, to forget dead flows")
        self.arguments = list(arguments)
        self.prefix = prefix = uniquePrefix()
        self.created = created
        self.client = self._namespace(f"{prefix}-client")
        self.balancer = self._namespace(f"{prefix}-lb")
        self.backends = {i: self._namespace(f"{prefix}-b{i}") for i in (1, 2, 3)}
        self.others: dict[int, NetworkNamespace] = {}
        self.servers: dict[int, TwistdServer] = {}

        link(
            self.client, "lb", f"{CLIENTS[0]}/24",
            self.balancer, "clients", f"{VIP}/24",
        )  # fmt: skip
        self.client.run(self.ip, "address", "add", f"{CLIENTS[1]}/24", "dev", "lb")
        self.client.run(self.ip, "route", "add", "default", "via", VIP)
        self.balancer.sysctl("net.ipv4.ip_forward", "1")
        for i, namespace in self.backends.items():
            self._linkToBalancer(i, namespace)

    def _namespace(self, name: str) -> NetworkNamespace:
        namespace = NetworkNamespace.create(self.case, name, self.ip)
        self.created.append(name)
        return namespace

    def _linkToBalancer(self, index: int, namespace: NetworkNamespace) -> None:
        link(
            self.balancer, f"b{index}", f"10.123.{index}.1/24",
            namespace, "lb", f"{backendAddress(index)}/24",
        )  # fmt: skip
        namespace.run(self.ip, "route", "add", "default", "via", f"10.123.{index}.1")

    def addHost(self, index: int) -> NetworkNamespace:
        """
        One more namespace behind the balancer, for host C{index} (4 and
        up) at L{backendAddress}C{(index)}: it is none of the three
        instances L{startAll} starts and the balancer spreads over by
        default.
        """
        namespace = self._namespace(f"{self.prefix}-b{index}")
        self._linkToBalancer(index, namespace)
        self.others[index] = namespace
        return namespace

    def instanceArguments(self, index: int) -> list[str]:
        """
        The options of instance C{index}: text and NTP (the health probe's
        service, or the metrics port for C{/healthz}), trusting its own
        clock, summarising its counters every second.
        """
        extra = []
        if HEALTH_ENDPOINT:
            metrics = ["--metrics-port", str(METRICS_PORT)]
            extra = [*metrics, "--metrics-interface", backendAddress(index)]
        return [
            "--port", str(TEXT_PORT),
            "--ntp-port", str(NTP_PORT),
            "--local-stratum", "10",
            "--summary-interval", "1",
            *extra,
            *self.arguments,
        ]  # fmt: skip

    def start(self, index: int, extra: Sequence[str] = ()) -> TwistdServer:
        """
        Start instance C{index} in its namespace, with the options of
        L{instanceArguments} and C{extra}, and wait until it listens.
        """
        return self.startHost(index, [*self.instanceArguments(index), *extra], 2)

    def startHost(
        self, index: int, arguments: Sequence[str], listeners: int
    ) -> TwistdServer:
        """
        Start C{twistd udptime ARGUMENTS} in the namespace of instance or
        host C{index} and wait until C{listeners} services listen.
        """
        namespace = self.backends.get(index) or self.others[index]
        server = TwistdServer(arguments, preexec=namespace.command())
        self.case.addCleanup(server.cleanup)
        server.start(listeners=listeners)
        self.servers[index] = server
        return server

    def startAll(self) -> None:
        """
        Start the three instances.
        """
        for index in self.backends:
            self.start(index)

    def backendList(self) -> list[Backend]:
        """
        The instances as the health loop sees them: their addresses, and
        the port its probe asks.
        """
        port = METRICS_PORT if HEALTH_ENDPOINT else NTP_PORT
        return [Backend(backendAddress(i), port) for i in self.backends]

    def healthLoop(self, balancer: NftablesBalancer) -> HealthLoop:
        """
        A started health loop over the three instances, stopped on cleanup.
        """
        probe = healthzProbe if HEALTH_ENDPOINT else ntpProbe
        loop = HealthLoop(balancer, self.backendList(), probe, self.conntrack)
        self.case.addCleanup(loop.stop)
        loop.start()
        return loop

    def newBalancer(
        self, spread: str = ROUND_ROBIN, port: int = TEXT_PORT
    ) -> NftablesBalancer:
        """
        A balancer of L{VIP}:C{port} over the three instances.
        """
        balancer = NftablesBalancer(self.balancer, self.nft, VIP, port, spread)
        balancer.install([backendAddress(i) for i in self.backends])
        return balancer

    def ask(
        self,
        payload: bytes = b"unix",
        tries: int = 3,
        timeout: float = 0.5,
        source: str = CLIENTS[0],
    ) -> tuple[bytes, tuple[str, int], int]:
        """
        Ask L{VIP}'s text service from the clients' namespace, each try
        from a new socket (a new source port: a new flow); return the reply,
        the address it came from (whatever it is) and the number of tries.

        @raise TimeoutError: no reply to any of C{tries} tries.
        """
        for attempt in range(1, tries + 1):
            with self.client.socket() as sock:
                sock.bind((source, 0))
                sock.sendto(payload, (VIP, TEXT_PORT))
                sock.settimeout(timeout)
                try:
                    data, sender = sock.recvfrom(2048)
                except TimeoutError:
                    continue
                return data, sender, attempt
        raise TimeoutError(f"no reply from {VIP}:{TEXT_PORT} after {tries} tries")

    def flood(self, count: int, source: str) -> None:
        """
        Send C{count} text requests to L{VIP} from C{source}, each from a
        new source port, without waiting for replies (rate-limited ones get
        none): what the servers decided is read from their counters.
        """
        for _ in range(count):
            with self.client.socket() as sock:
                sock.bind((source, 0))
                sock.sendto(b"unix", (VIP, TEXT_PORT))

    def totals(self) -> dict[int, dict[str, int]]:
        """
        Each running instance's text counters, by index.
        """
        return {i: counterTotals(s) for i, s in self.servers.items()}

    def waitForReceived(self, expected: int, what: str) -> dict[int, dict[str, int]]:
        """
        Wait (bounded) until the instances' summaries add up to C{expected}
        text requests received; return their totals.
        """

        def added() -> dict[int, dict[str, int]] | None:
            totals = self.totals()
            received = sum(t.get("received", 0) for t in totals.values())
            return totals if received >= expected else None

        return waitFor(added, what)

    def chronyd(
        self, trusted: str, directory: str, timeout: int
    ) -> tuple[int, str, list[str]]:
        """
        Run C{chronyd -Q} (which never touches the clock) in the clients'
        namespace as the NTS client of L{VIP}, trusting the CA certificates
        of C{trusted}, with a fresh NTS dump directory (no cookies from an
        earlier run) under C{directory}, until it exits (it gives up after
        C{timeout} seconds; it is killed, by its process id, if it has not
        exited some time after that).

        @return: its exit status, its output, and the source address of
            each measurement it logged.
        """
        chronyd = requirePeer("chronyd", "chronyd is the reference NTS client")
        state = tempfile.mkdtemp(prefix="chronyd-", dir=directory)
        command = self.client.command(
            chronyd, "-Q", "-x", "-u", "root", "-t", str(timeout),
            f"server {VIP} iburst nts maxsamples 4",
            f"ntstrustedcerts {trusted}",
            f"ntsdumpdir {state}",
            f"pidfile {state}/chronyd.pid",
            f"logdir {state}",
            "log measurements",
        )  # fmt: skip
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            output, _ = process.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            raise AssertionError(
                f"chronyd -t {timeout} still ran after {timeout + 30} seconds"
            ) from None
        sources = measurementSources(os.path.join(state, "measurements.log"))
        return process.returncode, output.decode("utf-8", "replace"), sources

    def pinnedBackend(self, sourcePort: int) -> str:
        """
        The instance address the balancer's conntrack pins the flow from
        the first client's C{sourcePort} to.
        """
        output = self.balancer.run(
            self.conntrack, "-L", "-p", "udp", "--orig-src", CLIENTS[0],
            "--orig-port-src", str(sourcePort),
        )  # fmt: skip
        sources = re.findall(r"src=(\S+)", output)
        # The original direction's source first, then the reply's.
        if len(sources) < 2:
            raise AssertionError(f"no conntrack entry for port {sourcePort}: {output}")
        return sources[1]


class FleetTests(SynchronousTestCase):
    """
    Three instances behind an nftables balancer in network namespaces.
    """

    def fleet(self, arguments: Sequence[str]) -> Fleet:
        """
        A fleet, whose namespaces are checked to be gone after cleanup.
        """
        created: list[str] = []
        # Registered first, so it runs last: after every namespace is gone.
        self.addCleanup(self.assertNoNamespacesLeft, created)
        return Fleet(self, arguments, created)

    def assertNoNamespacesLeft(self, created: list[str]) -> None:
        left = namespaceNames() & set(created)
        self.assertEqual(left, set(), "namespaces left behind")

    def assertFromVIP(self, sender: tuple[str, int]) -> None:
        self.assertEqual(sender, (VIP, TEXT_PORT), "a reply not from the address asked")

    def pinnedClient(self, fleet: Fleet) -> tuple[socket.socket, int, str]:
        """
        A client socket in the clients' namespace that keeps its source
        port, after one query answered from L{VIP}; and the index and address
        of the instance its flow is pinned to.
        """
        sticky = fleet.client.socket()
        self.addCleanup(sticky.close)
        sticky.bind((CLIENTS[0], 0))
        sticky.settimeout(2.0)
        sticky.sendto(b"unix", (VIP, TEXT_PORT))
        self.assertFromVIP(sticky.recvfrom(2048)[1])
        address = fleet.pinnedBackend(sticky.getsockname()[1])
        index = next(i for i in fleet.backends if backendAddress(i) == address)
        return sticky, index, address

    def test_spread(self) -> None:
        """
        Round robin over three instances: every query is answered from the
        balancer's address, and every instance answered some of them.
        """
        fleet = self.fleet(["--rate", "0"])
        fleet.startAll()
        fleet.newBalancer(ROUND_ROBIN)
        sent = 0
        for _ in range(30):
            reply, sender, tries = fleet.ask()
            sent += tries
            self.assertFromVIP(sender)
            self.assertRegex(reply.decode("ascii"), r"^\d+\.\d{6}\n$")
        totals = fleet.waitForReceived(sent, "the summaries of 30 queries")
        for index, counters in totals.items():
            self.assertGreater(counters.get("answered", 0), 0, f"instance {index}")
        self.assertEqual(sum(t["received"] for t in totals.values()), sent)

    def test_failover(self) -> None:
        """
        An instance killed is taken out of the balancer by the health loop,
        its pinned flows forgotten; clients keep getting answers; restarted,
        it is taken back in and answers again.
        """
        fleet = self.fleet(["--rate", "0"])
        fleet.startAll()
        loop = fleet.healthLoop(fleet.newBalancer(ROUND_ROBIN))
        waitFor(lambda: loop.rounds >= 2, "two rounds of health probes")
        self.assertEqual(loop.events, [])
        self.assertEqual(loop.errors, [])

        # A client that keeps its source port (chronyd with a fixed
        # acquisition port, a NAT): its flow is pinned to one instance.
        sticky, victim, victimAddress = self.pinnedClient(fleet)

        self.assertEqual(fleet.servers[victim].stop(number=signal.SIGKILL), -9)
        # Round robin: the second try of any query reaches a live instance,
        # whether or not the health loop has noticed yet.
        for _ in range(6):
            self.assertFromVIP(fleet.ask(tries=3)[1])
        waitFor(lambda: victimAddress not in loop.live, "the health loop's removal")
        survivors = [backendAddress(i) for i in fleet.backends if i != victim]
        self.assertEqual(loop.live, survivors)
        self.assertEqual(loop.balancer.backends(), survivors)
        self.assertIn(("down", victimAddress), loop.events)

        # Every query is answered at the first try from now on, and the
        # sticky client's flow was forgotten: it reaches a live instance.
        for _ in range(12):
            self.assertFromVIP(fleet.ask(tries=1, timeout=2.0)[1])
        sticky.sendto(b"unix", (VIP, TEXT_PORT))
        self.assertFromVIP(sticky.recvfrom(2048)[1])
        self.assertIn(fleet.pinnedBackend(sticky.getsockname()[1]), survivors)

        fleet.start(victim)
        waitFor(lambda: victimAddress in loop.live, "the health loop taking it back")
        everyone = [backendAddress(i) for i in fleet.backends]
        self.assertEqual(loop.balancer.backends(), everyone)
        self.assertEqual(loop.events[-1], ("up", victimAddress))
        for _ in range(6):
            self.assertFromVIP(fleet.ask(tries=1, timeout=2.0)[1])
        waitFor(
            lambda: counterTotals(fleet.servers[victim]).get("answered", 0) > 0,
            "the restarted instance answering through the balancer",
        )
        self.assertEqual(loop.errors, [])

    def test_pinnedFlowsNeedForgetting(self) -> None:
        """
        Taking a dead instance out of the nftables map is not enough for a
        client that keeps its source port: conntrack still sends its flow
        to the dead instance until the flow's entry is deleted.
        """
        fleet = self.fleet(["--rate", "0"])
        fleet.startAll()
        balancer = fleet.newBalancer(ROUND_ROBIN)
        sticky, victim, victimAddress = self.pinnedClient(fleet)
        fleet.servers[victim].stop(number=signal.SIGKILL)

        survivors = [backendAddress(i) for i in fleet.backends if i != victim]
        balancer.install(survivors)
        sticky.settimeout(0.5)
        sticky.sendto(b"unix", (VIP, TEXT_PORT))
        self.assertRaises((TimeoutError, ConnectionRefusedError), sticky.recvfrom, 2048)
        self.assertEqual(fleet.pinnedBackend(sticky.getsockname()[1]), victimAddress)
        self.assertFromVIP(fleet.ask(tries=1, timeout=2.0)[1])

        balancer.forget(fleet.conntrack, victimAddress)
        sticky.settimeout(2.0)
        sticky.sendto(b"unix", (VIP, TEXT_PORT))
        self.assertFromVIP(sticky.recvfrom(2048)[1])

    def test_rateLimitsPerInstance(self) -> None:
        """
        Rate limits are each instance's own.  One client whose requests are
        spread over three instances (round robin, a new source port per
        request) is answered up to three bursts; with balancing by source
        address (C{jhash ip saddr}) all its requests meet one instance and
        one burst.  What is asserted is what the servers decided.
        """
        rate, burst, count = 0.01, 3, 30
        fleet = self.fleet(["--rate", str(rate), "--burst", str(burst)])
        fleet.startAll()
        fleet.newBalancer(ROUND_ROBIN)
        started = time.monotonic()
        fleet.flood(count, CLIENTS[0])
        spread = fleet.waitForReceived(count, "the round robin flood's summaries")
        bound = burst + rate * (time.monotonic() - started)
        for index, counters in spread.items():
            self.assertGreater(counters["received"], burst, f"instance {index}")
            self.assertGreaterEqual(counters["answered"], burst, f"instance {index}")
            self.assertLessEqual(counters["answered"], bound, f"instance {index}")
            self.assertEqual(
                counters["answered"] + counters["limited"], counters["received"]
            )
        answeredSpread = sum(c["answered"] for c in spread.values())
        self.assertEqual(answeredSpread, 3 * burst)

        # The same flood from the second client address, balanced by source.
        fleet.newBalancer(SOURCE_HASH)
        started = time.monotonic()
        fleet.flood(count, CLIENTS[1])
        hashed = fleet.waitForReceived(2 * count, "the source-hash flood's summaries")
        bound = burst + rate * (time.monotonic() - started)
        delta = {
            i: {k: hashed[i].get(k, 0) - spread[i].get(k, 0) for k in hashed[i]}
            for i in hashed
        }
        reached = [i for i, d in delta.items() if d.get("received", 0)]
        self.assertEqual(len(reached), 1, f"one instance only: {delta}")
        only = delta[reached[0]]
        self.assertEqual(only["received"], count)
        self.assertGreaterEqual(only["answered"], burst)
        self.assertLessEqual(only["answered"], bound)
        self.assertEqual(sum(d.get("answered", 0) for d in delta.values()), burst)

    def test_ntsThroughBalancer(self) -> None:
        """
        NTS through the balancer, C{chronyd -Q} as the client: one NTS-KE
        endpoint (a host of its own, reached through the balancer's
        address) sends clients to the balancer's address (NTPv4 Server
        and Port Negotiation), where the three NTP-only instances, which
        share its key file, open the cookies it sealed.  chronyd accepts
        the authenticated time, every sample from the balancer's address,
        and more than one instance authenticated its requests.

        Negative control: an instance with a key file of its own, made
        the only one behind the balancer, answers chronyd's requests with
        NTS NAKs (counted), and chronyd gets no time.
        """
        requirePeer("chronyd", "chronyd is the reference NTS client")
        directory = tempfile.mkdtemp(prefix="udptime-fleet-nts-")
        os.chmod(directory, 0o755)
        self.addCleanup(shutil.rmtree, directory, True)
        # The NTS-KE certificate names the balancer's address (an IP SAN):
        # clients check the name they connect to.
        files = makeCertificates(directory, names=(), addresses=(VIP,))
        keys = os.path.join(directory, "nts.keys")
        otherKeys = os.path.join(directory, "other.keys")
        for path in (keys, otherKeys):
            makeKeyFile(path)
        shared = ["--nts-key-file", keys, "--nts-key-rotation", "0"]

        fleet = self.fleet(["--rate", "0"])
        fleet.addHost(KEY_EXCHANGE_HOST)
        fleet.addHost(OTHER_KEYS_HOST)
        keyExchange = fleet.startHost(
            KEY_EXCHANGE_HOST,
            [
                "--port", "0",
                "--nts-ke-port", str(NTS_KE_PORT),
                "--nts-certificate", files.certificate,
                "--nts-private-key", files.key,
                "--nts-ntp-server", VIP,
                "--nts-ntp-port", str(NTP_PORT),
                "--summary-interval", "1",
                *shared,
            ],
            listeners=1,
        )  # fmt: skip
        for index in fleet.backends:
            fleet.start(index, shared)
        stranger = fleet.start(
            OTHER_KEYS_HOST, ["--nts-key-file", otherKeys, "--nts-key-rotation", "0"]
        )
        balancer = fleet.newBalancer(ROUND_ROBIN, port=NTP_PORT)
        balancer.forwardTCP(NTS_KE_PORT, backendAddress(KEY_EXCHANGE_HOST))

        status, output, samples = fleet.chronyd(files.ca, directory, timeout=30)
        self.assertEqual(status, 0, output)
        self.assertIn("System clock wrong by", output)
        self.assertTrue(samples, output)
        self.assertEqual(set(samples), {VIP})

        # Only the stranger behind the balancer: its NAKs send chronyd back
        # to the key exchange, whose cookies it cannot open either.
        balancer.install([backendAddress(OTHER_KEYS_HOST)])
        status, output, sources = fleet.chronyd(files.ca, directory, timeout=6)
        self.assertNotEqual(status, 0, output)
        self.assertNotIn("System clock wrong by", output)
        self.assertEqual(sources, [])

        for server in fleet.servers.values():
            server.stop()
        nts = {i: counterTotals(fleet.servers[i], "nts") for i in fleet.backends}
        authenticated = [n.get("authenticated", 0) for n in nts.values()]
        self.assertGreater(len([a for a in authenticated if a]), 1, f"{nts}")
        # Every sample chronyd took is a reply an instance authenticated.
        self.assertGreaterEqual(sum(authenticated), len(samples), f"{nts}")
        for index, counters in nts.items():
            self.assertEqual(set(counters) - {"authenticated"}, set(), f"{index}")
        strangerNTS = counterTotals(stranger, "nts")
        self.assertGreaterEqual(strangerNTS.get("naks", 0), 1, f"{strangerNTS}")
        self.assertNotIn("authenticated", strangerNTS)
        ke = counterTotals(keyExchange, "nts-ke")
        self.assertGreaterEqual(ke.get("sessions", 0), 2, f"{ke}")
        self.assertNotIn("errorsSent", ke)


class RulesetTests(SynchronousTestCase):
    """
    The nftables script the balancer installs (no namespace needed).
    """

    def test_roundRobin(self) -> None:
        script = ruleset(VIP, 5000, ROUND_ROBIN, ["10.123.1.2", "10.123.3.2"])
        self.assertIn(f"flush chain ip {TABLE} prerouting\n", script)
        self.assertIn(
            f"add rule ip {TABLE} prerouting ip daddr {VIP} udp dport 5000 dnat to"
            " numgen inc mod 2 map { 0 : 10.123.1.2, 1 : 10.123.3.2 }\n",
            script,
        )

    def test_sourceHash(self) -> None:
        self.assertIn(
            "dnat to jhash ip saddr mod 1 map { 0 : 10.123.2.2 }",
            ruleset(VIP, 123, SOURCE_HASH, ["10.123.2.2"]),
        )

    def test_forwardTCP(self) -> None:
        """
        A TCP port forwarded to one backend, in a chain of its own, which
        the UDP balancer's rule replacements leave alone.
        """
        script = forwardingRuleset(VIP, 4460, "10.123.4.2")
        self.assertIn(f"flush chain ip {TABLE} {FORWARD_CHAIN}\n", script)
        self.assertIn(
            f"add rule ip {TABLE} {FORWARD_CHAIN} ip daddr {VIP} tcp dport 4460"
            " dnat to 10.123.4.2\n",
            script,
        )
        self.assertNotIn(FORWARD_CHAIN, ruleset(VIP, 123, ROUND_ROBIN, []))

    def test_noBackends(self) -> None:
        """
        Without a live backend the chain is flushed and left empty.
        """
        script = ruleset(VIP, 5000, ROUND_ROBIN, [])
        self.assertTrue(script.endswith(f"flush chain ip {TABLE} prerouting\n"))
        self.assertNotIn("add rule", script)


class _Health(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.status = 200

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(self.status)
        return b"ok\n" if self.status == 200 else b"unhealthy\n"


class HealthzProbeTests(TestCase):
    """
    L{healthzProbe} against a real HTTP server on loopback: the probe the
    health loop uses once instances serve C{/healthz}.
    """

    @inlineCallbacks
    def test_statuses(self):  # type: ignore[no-untyped-def]
        health = _Health()
        root = Resource()
        root.putChild(b"healthz", health)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        self.assertTrue(
            (yield threads.deferToThread(healthzProbe, "127.0.0.1", number, 5.0))
        )
        health.status = 503
        self.assertFalse(
            (yield threads.deferToThread(healthzProbe, "127.0.0.1", number, 5.0))
        )
        yield port.stopListening()
        self.assertFalse(
            (yield threads.deferToThread(healthzProbe, "127.0.0.1", number, 5.0))
        )
