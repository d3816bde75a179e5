"""
Roughtime keys: the server's long-term key file, and the online key it
delegates (RFC 10049 §5.2.6).

The long-term key is the server's identity: clients are configured with its
public key.  It signs only delegations, so it can stay off the request path;
the online key, which signs responses, lives in memory only and is replaced
long before its delegation expires.

Key files hold the 32-byte Ed25519 seed (RFC 8032 §5.1.5) as written by
C{udptime-roughtime keygen}: base64 on one line.  Also read: the C{.env} line
C{roughly server keygen} writes (C{ROUGHLY_PRIVATE_KEY=<base64>}), the
base64 of Go's 64-byte private key (seed and public key, as Cloudflare's
C{keygen} writes), 64 hexadecimal digits (roughenough's seed), and a PKCS #8
PEM file (C{openssl genpkey -algorithm ed25519}).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import string
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.python import usage

from udptime.roughtime import Delegation, makeDelegation, midpointFor

DEFAULT_VALIDITY = 24 * 3600.0
"""Seconds an online key is delegated for."""

DEFAULT_RENEWAL = 0.5
"""The fraction of its validity after which an online key is replaced."""

_ENVIRONMENT_LINE = re.compile(rb"^[A-Za-z_][A-Za-z0-9_]*=(.*)$")
"""A line of a C{.env} file, as C{roughly server keygen} writes."""


class KeyFileError(ValueError):
    """
    A key file that holds no Ed25519 private key udptime can read.
    """


def parseLongTermKey(data: bytes) -> Ed25519PrivateKey:
    """
    The Ed25519 private key in the contents of a key file (see the module's
    description for the formats read).

    @raise KeyFileError: no key in a format read here, or a 64-byte key
        whose second half is not the seed's public key.
    """
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise KeyFileError(f"not a readable unencrypted PEM key: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError("the PEM key is not an Ed25519 key")
        return key
    lines = text.splitlines()
    if len(lines) != 1:
        raise KeyFileError("expected one line: the base64 Ed25519 seed")
    line = lines[0].strip()
    assignment = _ENVIRONMENT_LINE.match(line)
    if assignment is not None and assignment.group(1).strip(b"="):
        # NAME=value, not base64 padding.
        line = assignment.group(1).strip().strip(b"\"'")
    raw = _decodeKeyText(line)
    if len(raw) == 64:
        key = Ed25519PrivateKey.from_private_bytes(raw[:32])
        if key.public_key().public_bytes_raw() != raw[32:]:
            raise KeyFileError("the 64-byte key's public half does not match its seed")
        return key
    if len(raw) != 32:
        raise KeyFileError(f"an Ed25519 seed is 32 bytes, this key is {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def _decodeKeyText(text: bytes) -> bytes:
    if len(text) == 64 and all(chr(c) in string.hexdigits for c in text):
        return bytes.fromhex(text.decode("ascii"))
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise KeyFileError("the key is neither base64 nor hexadecimal") from None


def loadLongTermKey(path: str) -> Ed25519PrivateKey:
    """
    The long-term key in the file at C{path}.

    @raise KeyFileError: the file holds no key read here.
    @raise OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return parseLongTermKey(data)
    except KeyFileError as e:
        raise KeyFileError(f"{path}: {e}") from None


def parsePublicKey(text: str) -> bytes:
    """
    A server's long-term public key from its base64 text, as server lists
    and C{udptime-roughtime keygen} give it.

    @raise ValueError: not base64, or not 32 bytes.
    """
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("the public key is not base64") from None
    if len(key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return key


def roughtimeKeyOption(port: int, path: str | None) -> Ed25519PrivateKey | None:
    """
    The long-term key C{twistd udptime} serves Roughtime with, from its
    C{--roughtime-port} and C{--roughtime-key} options: read from C{path}
    when the service runs (C{port} not 0), L{None} when it does not.

    @raise usage.UsageError: the service runs without a key file, a key
        file is given for a service that does not run, or the file cannot
        be read or holds no key read here.
    """
    if not port:
        if path is not None:
            raise usage.UsageError(
                "--roughtime-key is for Roughtime: give --roughtime-port"
            )
        return None
    if path is None:
        raise usage.UsageError(
            "--roughtime-port needs --roughtime-key FILE "
            "('udptime-roughtime keygen FILE' makes one)"
        )
    try:
        return loadLongTermKey(path)
    except KeyFileError as e:
        raise usage.UsageError(f"--roughtime-key: {e}") from None
    except OSError as e:
        raise usage.UsageError(
            f"--roughtime-key: cannot read {path}: {e.strerror or e}"
        ) from None


def publicKeyText(key: Ed25519PrivateKey) -> str:
    """
    The public key of C{key} in base64, as clients and server lists give it.
    """
    return base64.b64encode(key.public_key().public_bytes_raw()).decode("ascii")


def writeNewKey(path: str) -> Ed25519PrivateKey:
    """
    Make a new long-term key and write its seed, in base64, to a new file
    at C{path} that only its owner can read (mode 0600).

    @raise FileExistsError: C{path} exists: a key is never overwritten.
    """
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(base64.b64encode(seed) + b"\n")
    return key


class OnlineKey:
    """
    The online key of a server: a key made in memory, delegated by the
    long-term key for C{validity} seconds from the time it is made, and
    replaced by a new one once C{renewal} of that time has passed (or when
    the clock went back before its MINT).  It is never written anywhere.

    @ivar longTermKey: the long-term private key that signs delegations.
    @ivar validity: seconds from MINT to MAXT.
    @ivar renewal: the fraction of C{validity} a key is used for.
    @ivar delegations: delegations made so far.
    """

    def __init__(
        self,
        longTermKey: Ed25519PrivateKey,
        validity: float = DEFAULT_VALIDITY,
        renewal: float = DEFAULT_RENEWAL,
        generate: Callable[[], Ed25519PrivateKey] = Ed25519PrivateKey.generate,
    ) -> None:
        """
        @param generate: makes a new online key (injected in tests).
        @raise ValueError: C{validity} is under a minute, or C{renewal} is
            not between 0 and 1.
        """
        if not 60 <= validity < math.inf:
            raise ValueError(f"an online key is valid for 60 s or more, not {validity}")
        if not 0 < renewal < 1:
            raise ValueError(f"renewal is a fraction of the validity, not {renewal}")
        self.longTermKey = longTermKey
        self.validity = validity
        self.renewal = renewal
        self.delegations = 0
        self._generate = generate
        self._current: Delegation | None = None
        self._renewAt = 0

    def current(self, now: float) -> Delegation:
        """
        The delegation to sign responses with at Unix time C{now}: one that
        covers C{now}'s MIDP, made now when the last one is due for renewal.
        """
        midpoint = midpointFor(now)
        current = self._current
        if current is None or not current.minTime <= midpoint < self._renewAt:
            minTime = math.floor(now)
            current = makeDelegation(
                self.longTermKey,
                self._generate(),
                minTime,
                minTime + math.ceil(self.validity),
            )
            self._current = current
            self._renewAt = minTime + max(1, math.floor(self.validity * self.renewal))
            self.delegations += 1
        return current
