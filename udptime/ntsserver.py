"""
Network Time Security in the server: the NTS half of the NTP service's
decision, and the keys and services C{twistd udptime} runs for NTS.

L{NTSAuthentication} is what L{NTPServer<udptime.server.NTPServer>} asks
about each request that is not a plain 48-byte one (see
L{udptime.nts.checkRequest}): L{None} for a request without NTS fields,
answered as any NTP request; an L{NTSRequest<udptime.nts.NTSRequest>}, which
seals the reply the NTP server builds; or a
L{Refusal<udptime.decision.Refusal>} carrying the NTS NAK (a Kiss-o'-Death
C{NTSN}) for a request whose cookie cannot be opened.  A malformed NTS
request, or one whose authenticator does not verify, raises the NTP codec's
errors, which the NTP server drops, counts and logs as for any bad request.

The keys (L{serverKeys}): from the key file (C{--nts-key-file}), made when
it does not exist, or random keys made for this process tree; a supervisor
of workers hands its keys to the workers on their standard input (see
L{udptime.ntskeys}), so that every worker opens every cookie.  Importing
this module imports neither the reactor nor the NTS cryptography: the
functions that need them import them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from twisted.application.service import IServiceCollection
from twisted.logger import Logger

from udptime import counters
from udptime.counters import CounterSet
from udptime.decision import Refusal
from udptime.policy import RateLimiter

if TYPE_CHECKING:
    from udptime.briefing import BriefingService
    from udptime.nts import NTSNak, NTSRequest, SessionCiphers
    from udptime.ntscookie import CookieKeys
    from udptime.ntskeserver import NTSKEService

HANDOVER_TIMEOUT: Final = 10.0
"""Seconds a worker waits for its supervisor's keys before it gives up."""

NTS_NAK_LOG_RATE: Final = 0.2
"""Log lines per second about NTS NAKs, sustained."""

NTS_NAK_LOG_BURST: Final = 10
"""Log lines about NTS NAKs back to back."""

NTS_KEY_ROTATION_DEFAULT: Final = 7 * 86400.0
"""Seconds between rotations of the NTS server keys by default (a week, as
chrony rotates: L{udptime.ntscookie.DEFAULT_ROTATION})."""

NTS_NTP_PORT_DEFAULT: Final = 123
"""The NTP port a key exchange names when it names none (RFC 8915)."""


class NTSSetupError(Exception):
    """
    NTS cannot be set up as asked (a key file or certificate that cannot be
    used, no keys from the supervisor): one line that says why.
    """


NTS_COUNTER_NAMES: Final = (
    "authenticated",
    "naks",
    "badAuthenticators",
    "malformed",
    "rateKisses",
    "rateDrops",
)
"""The names of the L{NTSCounters}, in the order summaries show them."""


class NTSCounters(CounterSet):
    """
    What the NTP service did with NTS requests.

    @ivar authenticated: requests answered with an authenticated reply.
    @ivar naks: requests answered with an NTS NAK: their cookie could not
        be opened (keys changed, or a cookie of another server).
    @ivar badAuthenticators: requests dropped because their cookie opened
        but their authenticator did not verify (damaged or forged).
    @ivar malformed: requests dropped because their NTS fields were not a
        well-formed NTS request.
    @ivar rateKisses: requests refused by the rate limits and answered with
        an authenticated Kiss-o'-Death C{RATE} (see
        L{NTSAuthentication.refused}).
    @ivar rateDrops: requests refused by the rate limits, picked for a
        Kiss-o'-Death, and dropped instead because no authenticated one
        could be made (their cookie did not open, or they failed the checks
        counted above, which count them too).
    """

    __slots__ = NTS_COUNTER_NAMES
    authenticated: int
    naks: int
    badAuthenticators: int
    malformed: int
    rateKisses: int
    rateDrops: int


class NTSAuthentication:
    """
    The NTS half of the NTP service's decision about a request.

    @ivar keys: the server keys that open and seal cookies; kept current by
        the key services (L{serverKeys}), which change them in place.
    @ivar ciphers: the cache of session AES-SIV objects.
    @ivar counters: the L{NTSCounters}.
    """

    log = Logger()

    def __init__(
        self,
        keys: CookieKeys,
        ciphers: SessionCiphers | None = None,
        randomBytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        from udptime import nts

        # The codec's function and types, bound once: an import statement in
        # the per-request methods costs more than the checks around it.
        self._checkRequest = nts.checkRequest
        self._nak = nts.NTSNak
        self._malformed = nts.MalformedNTSRequest
        self._notAuthentic = nts.NTSAuthenticationFailed
        self.keys = keys
        self.ciphers = nts.SessionCiphers() if ciphers is None else ciphers
        self.randomBytes = randomBytes
        self.counters = NTSCounters()
        self._nakLog = RateLimiter(NTS_NAK_LOG_RATE, NTS_NAK_LOG_BURST)

    def check(
        self, data: bytes, addr: tuple[str, int], received: float
    ) -> NTSRequest | Refusal | None:
        """
        The NTS decision about the request C{data} from C{addr}, which
        L{udptime.ntp.parseRequest} accepted.

        @return: L{None} for a request without NTS fields (answered as any
            NTP request); an L{NTSRequest<udptime.nts.NTSRequest>} for an
            authentic one, whose C{seal} makes the reply from its header; a
            L{Refusal} with the NTS NAK, counted C{dropped} and, once sent,
            C{kissed}, for one whose cookie cannot be opened.
        @raise udptime.nts.MalformedNTSRequest: malformed NTS fields (a
            L{MalformedPacket<udptime.ntp.MalformedPacket>}: dropped as
            malformed).
        @raise udptime.nts.NTSAuthenticationFailed: the authenticator does
            not verify (a L{NotServed<udptime.ntp.NotServed>}: dropped).
        """
        verdict = self._verdict(data)
        if not isinstance(verdict, self._nak):
            if verdict is not None:
                self.counters.authenticated += 1
            return verdict
        reply = verdict.reply(data, addr[1])
        if reply is None:
            # checkRequest answers version-4 client requests only, to which
            # a NAK can always be built.
            raise self._malformed("an NTS request that takes no NAK")
        self.counters.naks += 1
        if self._nakLog.admit(received):
            self.log.info(
                "ntp: NTS NAK to {addr}: {reason}", addr=addr, reason=verdict.reason
            )
        return Refusal(counters.DROPPED, reply, counters.KISSED)

    def refused(self, data: bytes, addr: tuple[str, int], minPoll: int) -> bytes | None:
        """
        The Kiss-o'-Death C{RATE} for the request C{data} from C{addr},
        which the rate limits refused and picked for a Kiss-o'-Death.

        RFC 8915 section 5.7 has an NTS client ignore every reply to an NTS
        request that is not authenticated, but for the NTS NAK: the plain
        KoD a plain request gets would be thrown away unread.  So, as
        chrony's server does, an authentic NTS request gets the KoD sealed
        as any reply to it is: the unique identifier echoed, and the
        authenticator carrying fresh cookies (the request spent one), never
        longer than the request.  An NTS request that is not authentic
        (cookie not opened, bad authenticator, malformed NTS fields) gets
        nothing, not even the NAK it would get unlimited: a NAK would send
        a client that is over its rate to a new key exchange, which costs
        the server far more than an NTP reply.  A request without NTS
        fields gets the plain KoD.  The policy picks at most a few requests
        per second for a KoD, which bounds the cryptography spent on
        refused requests.

        @param minPoll: the poll exponent the client should at least use.
        @return: the KoD, or L{None} to drop the request (counted in
            C{rateDrops}).
        """
        from udptime.ntp import buildKissOfDeath

        try:
            verdict = self._verdict(data)
        except (self._malformed, self._notAuthentic):
            self.counters.rateDrops += 1
            return None
        if isinstance(verdict, self._nak):
            self.counters.rateDrops += 1
            return None
        kiss = buildKissOfDeath(data, b"RATE", sourcePort=addr[1], minPoll=minPoll)
        if verdict is None or kiss is None:
            # No NTS fields: the plain KoD.  (An authentic NTS request is a
            # version-4 client request, which always takes a KoD.)
            return kiss
        self.counters.rateKisses += 1
        return verdict.seal(kiss)

    def _verdict(self, data: bytes) -> NTSRequest | NTSNak | None:
        """
        L{udptime.nts.checkRequest}'s verdict about C{data}, its failures
        counted.
        """
        try:
            return self._checkRequest(data, self.keys, self.ciphers, self.randomBytes)
        except self._notAuthentic:
            self.counters.badAuthenticators += 1
            raise
        except self._malformed:
            self.counters.malformed += 1
            raise


def serverKeys(
    options: Mapping[str, Any],
    reactor: Any,
    parent: IServiceCollection,
    *,
    worker: bool = False,
    handOver: Callable[[bytes], object] | None = None,
    briefing: BriefingService | None = None,
    clock: Callable[[], float] = time.time,
) -> CookieKeys:
    """
    The NTS server keys of this process, with the service that keeps them
    current added to C{parent}.

      - A worker (C{worker}) reads them from its standard input, where its
        supervisor writes them, and then any later keys as they come,
        through its C{briefing} (one is added to C{parent} when not given;
        see L{udptime.briefing}).
      - Otherwise they come from the key file C{options["nts-key-file"]}
        (made when it does not exist, unless this process does not rotate),
        or are random; with C{options["nts-key-rotation"]} seconds (not 0)
        this process rotates them, writing the key file; with 0 it follows
        the key file's keys by their activation times, and the file as it
        changes.  C{handOver}, when given, gets the key document line at
        once and after every change (a supervisor writes it to its
        workers).

    @raise NTSSetupError: the keys cannot be had.
    """
    from udptime.ntscookie import DEFAULT_PREVIOUS, CookieKeys
    from udptime.ntskeys import (
        FORMAT,
        CookieKeyService,
        KeyFileError,
        keyUpdateHandler,
        keyUpdateLine,
        loadOrCreateKeys,
        readKeyUpdate,
    )

    now = clock()
    if worker:
        try:
            document = readKeyUpdate(0, HANDOVER_TIMEOUT)
        except (OSError, EOFError, KeyFileError) as e:
            raise NTSSetupError(f"no NTS keys from the supervisor: {e}") from None
        keys = document.cookieKeys(now)
        if briefing is None:
            from udptime.briefing import BriefingService

            briefing = BriefingService(reactor, 0)
            briefing.setServiceParent(parent)
        briefing.handle(FORMAT, keyUpdateHandler(keys))
        return keys
    path: str | None = options["nts-key-file"]
    rotation: float = options["nts-key-rotation"]
    rotate = rotation > 0
    if path is None:
        keys = CookieKeys.generate(
            now,
            rotation=rotation if rotate else NTS_KEY_ROTATION_DEFAULT,
            previous=DEFAULT_PREVIOUS,
        )
    else:
        try:
            keys = loadOrCreateKeys(
                path, now, create=rotate, rotation=rotation or NTS_KEY_ROTATION_DEFAULT
            )
        except (OSError, KeyFileError) as e:
            raise NTSSetupError(f"cannot use the NTS key file {path}: {e}") from None
        if rotate:
            keys.rotation = rotation

    def changed(keys: CookieKeys) -> None:
        if handOver is not None:
            handOver(keyUpdateLine(keys))

    service = CookieKeyService(
        keys, reactor, path=path, rotate=rotate, clock=clock, onChange=changed
    )
    service.setServiceParent(parent)
    changed(keys)
    return keys


def keyExchangeService(
    options: Mapping[str, Any], reactor: Any, keys: CookieKeys
) -> NTSKEService:
    """
    The NTS-KE service of C{twistd udptime --nts-ke-port N}: on the
    interface of the UDP services, sealing cookies with C{keys}, and naming
    the NTP server and port of C{--nts-ntp-server} and C{--nts-ntp-port}
    (by default, the C{--ntp-port} of this server when it is not 123).

    @raise NTSSetupError: the certificate or key cannot be used.
    """
    from udptime.ntskeserver import NTSKEConfigurationError, ntsKEService

    ntpPort = options["nts-ntp-port"]
    if ntpPort is None and options["ntp-port"] not in (0, NTS_NTP_PORT_DEFAULT):
        ntpPort = options["ntp-port"]
    interface = options["interface"]
    try:
        service = ntsKEService(
            reactor,
            options["nts-ke-port"],
            options["nts-certificate"],
            options["nts-private-key"],
            keys,
            interface="" if interface == "::" else interface,
            ntpServer=options["nts-ntp-server"],
            ntpPort=ntpPort,
        )
    except (NTSKEConfigurationError, ValueError) as e:
        raise NTSSetupError(str(e)) from None
    service.setName("nts-ke")
    return service
