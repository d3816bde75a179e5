"""
Roughtime with several servers (RFC 10049 §8): chained requests, the
causality check, malfeasance reports and server lists, with no I/O.

A client asks its servers in turn, each request's nonce derived from the
previous response: C{H(response || rand)} for a fresh random C{rand}
(L{chainNonce}).  Each response was then signed after the one before it, so
if server i answered before server j, the earliest time i allowed,
C{MIDP_i - RADI_i}, cannot be after the latest time j allowed,
C{MIDP_j + RADI_j}.  When it is (L{causalityViolations}), one of them signed
a wrong time, and the chain of requests, responses and C{rand} values is
proof of it that anyone holding the servers' public keys can check: a
malfeasance report (L{reportFor}, L{verifyReport}), in RFC 10049's JSON
format (§8.4.1, media type C{application/roughtime-malfeasance+json}).

Server lists are RFC 10049's JSON format (§8.3, C{application/roughtime-
server+json}), which Cloudflare's and roughly's C{ecosystem.json} files
also follow, save that theirs may give the version as a string.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from udptime.address import formatAddress
from udptime.roughtime import (
    DEFAULT_CLIENT_VERSIONS,
    VERSION_1,
    VERSIONS,
    ClientRequest,
    MessageFormatError,
    RoughtimeVerificationError,
    Verified,
    readClientRequest,
    truncatedHash,
    verifyResponse,
)
from udptime.roughtimekeys import parsePublicKey

BLIND_SIZE: Final = 32
"""Bytes of the random value (C{rand}) mixed into a chained nonce."""

LEGACY_VERSIONS: Final[Mapping[str, tuple[int, ...] | None]] = {
    # Cloudflare's ecosystem.json names protocols, not numbers: its
    # "IETF-Roughtime" servers answered drafts 8 and 11 then, and newer
    # drafts or the RFC since.
    "IETF-Roughtime": tuple(sorted(VERSIONS)),
    "Google-Roughtime": None,
}
"""Server list versions given as strings, and what to offer for them."""

GOOGLE_ROUGHTIME: Final = 3000600613
"""The number the drafts gave pre-IETF Roughtime in server lists."""


def chainNonce(previousResponse: bytes, blind: bytes) -> bytes:
    """
    The nonce of a request chained to C{previousResponse} (the whole packet,
    C{ROUGHTIM} header included): H(previousResponse || blind).
    """
    return truncatedHash(previousResponse + blind)


@dataclass(frozen=True)
class Link:
    """
    One request of a chain and its valid response.

    @ivar publicKey: the long-term key the response was verified with.
    @ivar request: the request sent (its C{blind} is the report's C{rand}).
    @ivar response: the response packet.
    @ivar verified: what the response says.
    @ivar name: the server's name for people, when known.
    """

    publicKey: bytes
    request: ClientRequest
    response: bytes
    verified: Verified
    name: str = ""


def causalityViolations(readings: Sequence[Verified]) -> list[tuple[int, int]]:
    """
    The pairs C{(i, j)}, C{i} received before C{j}, whose times cannot both
    be right: C{MIDP_i - RADI_i > MIDP_j + RADI_j} (RFC 10049 §8.2).
    """
    return [
        (i, j)
        for i, earlier in enumerate(readings)
        for j in range(i + 1, len(readings))
        if earlier.midpoint - earlier.radius > readings[j].midpoint + readings[j].radius
    ]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def reportFor(links: Sequence[Link]) -> dict[str, Any]:
    """
    The malfeasance report of a chain: each link's C{publicKey}, C{request}
    and C{response}, and the C{rand} its nonce was chained with (left out
    for a first request with a random nonce), in the order received.

    @raise ValueError: a link after the first was not chained.
    """
    responses: list[dict[str, str]] = []
    for position, link in enumerate(links):
        entry = {
            "publicKey": _b64(link.publicKey),
            "request": _b64(link.request.packet),
            "response": _b64(link.response),
        }
        if link.request.blind is not None:
            entry["rand"] = _b64(link.request.blind)
        elif position:
            raise ValueError(f"link {position} was not chained to the one before")
        responses.append(entry)
    return {"responses": responses}


DEFAULT_REPORT: Final = "roughtime-malfeasance.json"
"""Where the commands write a malfeasance report unless told otherwise."""


def writeReport(path: str, links: Sequence[Link]) -> None:
    """
    Write the malfeasance report of C{links} (see L{reportFor}) to the file
    C{path}, as indented JSON.

    @raise OSError: the file cannot be written.
    @raise ValueError: a link after the first was not chained.
    """
    report = json.dumps(reportFor(links), indent=2) + "\n"
    with open(path, "w", encoding="ascii") as f:
        f.write(report)


def describeViolation(links: Sequence[Link], earlier: int, later: int) -> str:
    """
    For people: the responses C{earlier} and C{later} of C{links} (a pair
    of L{causalityViolations}) cannot both be right.
    """
    return (
        f"{links[earlier].name} (response {earlier}) answered a time later than"
        f" {links[later].name} (response {later}) allowed"
    )


class ReportError(ValueError):
    """
    A malfeasance report that proves nothing: malformed, a response that is
    not valid, or a request not chained to the response before it.

    @ivar index: the position of the response at fault, or L{None}.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        where = "" if index is None else f"response {index}: "
        super().__init__(where + message)
        self.index = index


@dataclass(frozen=True)
class ReportVerdict:
    """
    What checking a malfeasance report found.

    @ivar links: the report's responses, every one valid and chained.
    @ivar violations: the pairs of responses that cannot both be right (see
        L{causalityViolations}); none when the report proves nothing wrong.
    """

    links: tuple[Link, ...]
    violations: tuple[tuple[int, int], ...]

    @property
    def provesMalfeasance(self) -> bool:
        """
        Whether at least one server in the report signed a wrong time.
        """
        return bool(self.violations)


def _decoded(entry: Mapping[str, Any], key: str, index: int) -> bytes:
    value = entry.get(key)
    if not isinstance(value, str):
        raise ReportError(f"no base64 {key!r}", index)
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except binascii.Error:
        raise ReportError(f"{key!r} is not base64", index) from None


def verifyReport(report: str | bytes | Mapping[str, Any]) -> ReportVerdict:
    """
    Check a malfeasance report (JSON text, or its parsed object): every
    response valid for its request and public key, every request after the
    first chained to the response before it, and which responses disagree.

    @raise ReportError: the report is malformed, or a response or a link of
        the chain does not check out.
    """
    if isinstance(report, (str, bytes)):
        try:
            report = json.loads(report)
        except ValueError as e:
            raise ReportError(f"not JSON: {e}") from None
    if not isinstance(report, Mapping):
        raise ReportError("not a JSON object")
    entries = report.get("responses")
    if not isinstance(entries, list) or not entries:
        raise ReportError("no list of responses")
    links: list[Link] = []
    previous: bytes | None = None
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ReportError("not a JSON object", index)
        publicKey = _decoded(entry, "publicKey", index)
        packet = _decoded(entry, "request", index)
        response = _decoded(entry, "response", index)
        blind = _decoded(entry, "rand", index) if "rand" in entry else None
        try:
            request = readClientRequest(packet)
        except MessageFormatError as e:
            raise ReportError(
                f"the request is not a Roughtime request: {e}", index
            ) from None
        if previous is not None:
            if blind is None or len(blind) != BLIND_SIZE:
                raise ReportError(f"no {BLIND_SIZE}-byte 'rand'", index)
            if request.nonce != chainNonce(previous, blind):
                raise ReportError(
                    "the nonce is not chained to the response before", index
                )
        request = ClientRequest(request.packet, request.nonce, request.versions, blind)
        try:
            verified = verifyResponse(request, response, publicKey)
        except RoughtimeVerificationError as e:
            raise ReportError(f"{e.reason}: {e}", index) from None
        links.append(Link(publicKey, request, response, verified))
        previous = response
    violations = causalityViolations([link.verified for link in links])
    return ReportVerdict(tuple(links), tuple(violations))


# Server lists.


@dataclass(frozen=True)
class ServerEntry:
    """
    A server of a server list.

    @ivar name: its name for people.
    @ivar publicKey: its long-term Ed25519 public key.
    @ivar versions: the versions to offer it.
    @ivar addresses: its UDP addresses, C{(host, port)}.
    """

    name: str
    publicKey: bytes
    versions: tuple[int, ...]
    addresses: tuple[tuple[str, int], ...]


class ServerListError(ValueError):
    """
    A server list, or an entry of one, that cannot be used.
    """


def parseAddress(address: str, defaultPort: int | None = None) -> tuple[str, int]:
    """
    The host and port of a server list address: C{host:port}, with an IPv6
    address in brackets (C{[2001:db8::1]:2002}).

    @param defaultPort: the port of an address that gives none (C{host},
        C{[2001:db8::1]}); L{None}: every address must give its port.
    @raise ServerListError: no port (and no C{defaultPort}), a bad port, or
        an IPv6 address without brackets.
    """
    if defaultPort is not None and (":" not in address or address.endswith("]")):
        host, colon, port = address, ":", str(defaultPort)
    else:
        host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ServerListError(f"bad address {address!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ServerListError(f"bad IPv6 address in {address!r}") from None
    elif ":" in host:
        raise ServerListError(f"an IPv6 address goes in brackets: {address!r}")
    return host, int(port)


def parseServer(text: str, defaultPort: int) -> ServerEntry:
    """
    A server given as C{KEY@ADDRESS}, as the C{udptime} command's
    C{--roughtime} takes it: its long-term public key in base64, then its
    address (C{host}, C{host:port}, C{[2001:db8::1]} or
    C{[2001:db8::1]:port}; C{defaultPort} when it gives none).  It is
    offered the client's default versions, and named by its address.

    @raise ServerListError: no C{@}, a bad key or a bad address.
    """
    key, at, address = text.partition("@")
    if not at:
        raise ServerListError(f"expected KEY@HOST[:PORT], not {text!r}")
    try:
        publicKey = parsePublicKey(key)
    except ValueError as e:
        raise ServerListError(f"{e}: {key!r}") from None
    return addressedServer(publicKey, *parseAddress(address, defaultPort))


def addressedServer(publicKey: bytes, host: str, port: int) -> ServerEntry:
    """
    The server at C{host} and C{port} whose long-term key is C{publicKey},
    offered the client's default versions and named by its address.
    """
    return ServerEntry(
        formatAddress(host, port), publicKey, DEFAULT_CLIENT_VERSIONS, ((host, port),)
    )


def versionsFor(version: object) -> tuple[int, ...]:
    """
    The versions to offer a server whose list entry gives C{version}: that
    number (the highest version the server speaks); every version spoken
    here for Cloudflare's C{"IETF-Roughtime"}.

    @raise ServerListError: a version not spoken here (Google's Roughtime
        among them).
    """
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if isinstance(version, str):
        legacy = LEGACY_VERSIONS.get(version)
        if legacy is None:
            raise ServerListError(f"version {version!r} is not spoken here")
        return legacy
    if isinstance(version, bool) or not isinstance(version, int):
        raise ServerListError(f"bad version {version!r}")
    if version not in VERSIONS:
        name = "Google's Roughtime" if version == GOOGLE_ROUGHTIME else version
        raise ServerListError(f"version {name} is not spoken here")
    return (version,)


def _serverEntry(item: object) -> ServerEntry:
    if not isinstance(item, Mapping):
        raise ServerListError("a server is not a JSON object")
    name = item.get("name")
    if not isinstance(name, str):
        raise ServerListError("a server has no name")
    if item.get("publicKeyType") != "ed25519":
        raise ServerListError(f"{name}: the key type is not ed25519")
    try:
        publicKey = base64.b64decode(str(item.get("publicKey")), validate=True)
    except binascii.Error:
        raise ServerListError(f"{name}: the public key is not base64") from None
    if len(publicKey) != 32:
        raise ServerListError(f"{name}: the public key is not 32 bytes")
    try:
        versions = versionsFor(item.get("version", VERSION_1))
    except ServerListError as e:
        raise ServerListError(f"{name}: {e}") from None
    addresses = item.get("addresses")
    if not isinstance(addresses, list):
        raise ServerListError(f"{name}: no list of addresses")
    try:
        udp = tuple(
            parseAddress(str(a.get("address")))
            for a in addresses
            if isinstance(a, Mapping) and a.get("protocol") == "udp"
        )
    except ServerListError as e:
        raise ServerListError(f"{name}: {e}") from None
    if not udp:
        raise ServerListError(f"{name}: no UDP address")
    return ServerEntry(name, publicKey, versions, udp)


def parseServerList(
    data: str | bytes | Mapping[str, Any],
) -> tuple[list[ServerEntry], list[str]]:
    """
    The servers of a server list, and why others were left out (a key type
    other than Ed25519, a version not spoken here, no UDP address: clients
    ignore such entries, as RFC 10049 lets them).

    @raise ServerListError: not a server list.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as e:
            raise ServerListError(f"not JSON: {e}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("servers"), list):
        raise ServerListError('not a server list: no "servers" list')
    servers: list[ServerEntry] = []
    skipped: list[str] = []
    for item in data["servers"]:
        try:
            servers.append(_serverEntry(item))
        except ServerListError as e:
            skipped.append(str(e))
    return servers, skipped


def readServerList(path: str) -> tuple[list[ServerEntry], list[str]]:
    """
    The servers of the server list in the file C{path}, and why others were
    left out (see L{parseServerList}).

    @raise ServerListError: the file cannot be read, or is not a server
        list; the message names the file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ServerListError(f"cannot read {path}: {e.strerror}") from None
    try:
        return parseServerList(data)
    except ServerListError as e:
        raise ServerListError(f"{path}: {e}") from None
