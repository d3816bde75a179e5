"""
NTS server keys on disk and between processes: the key file, its
rotation, and the hand-over of keys from a supervisor to its workers.

Key file
========

A key file (C{--nts-key-file FILE}) shares the cookie keys between every
udptime process and host that serves NTS for one name: the NTS-KE host
seals cookies that the NTP hosts open.  It is JSON::

    {
      "format": "udptime-nts-keys",
      "version": 1,
      "rotation": 604800,
      "previous": 2,
      "keys": [
        {"id": "1c9e40a2", "created": "2026-11-14T00:00:00Z",
         "activates": "2026-11-14T00:00:00Z", "key": "<base64, 32 bytes>"},
        ...
      ]
    }

  - C{rotation}: seconds between rotations; C{previous}: keys kept after
    they stop sealing (see L{udptime.ntscookie}).
  - Each key: its id (8 hex digits: the first 4 bytes of every cookie it
    seals), when it was made, when it starts sealing new cookies (ISO 8601,
    UTC), and the 32 secret bytes in base64.  The current key is the latest
    whose activation time has passed; the key after it is the I{next} key,
    listed a whole rotation before it seals anything, so that every host
    reading the file can open its cookies before any host makes them.

The file is written atomically (a temporary file in the same directory,
mode 0600, written, C{fsync}ed, renamed over the old one, and the directory
C{fsync}ed), so a reader sees the old file or the new one, never a part.
Processes notice a new file by its inode, size and modification time,
checked from a timer (L{CookieKeyService}).  Exactly one process rotates a
key file: with C{rotate=True} it rotates when the next key's time comes and
writes the file; the others only read it.  Writers serialise on a lock file
beside it (C{FILE.lock}, C{flock}), so that the operator command below and
a rotating server do not overwrite each other.

The operator's command, C{udptime-nts-keys} (or C{python -m
udptime.ntskeys})::

    udptime-nts-keys new FILE [--rotation SECONDS] [--previous N] [--force]
    udptime-nts-keys rotate FILE
    udptime-nts-keys show FILE

C{new} makes a key file with a current and a next key; C{rotate} makes the
next key current now and adds a new next key (the usual rotation, for a
cron job when no server rotates the file: run it before the next key's
activation time, or it makes a new key current at once, and says so);
C{show} lists the keys, never their secret bytes.

Hand-over to workers
====================

Without a key file, a process tree has its own random keys, made by the
supervisor.  They reach the workers through the pipe on each worker's
standard input, never through the command line, the environment or the
file system: the supervisor writes the key document (the key file's JSON,
on one line, L{keyUpdateLine}) when it starts a worker and again after
every rotation; a worker reads the first line before it serves
(L{readKeyUpdate}, with a deadline) and the later ones as they come
(L{KeyUpdateReader}).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import fcntl
import json
import os
import select
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from udptime.briefing import BriefingReader
from udptime.ntscookie import (
    DEFAULT_PREVIOUS,
    DEFAULT_ROTATION,
    KEY_SIZE,
    CookieKey,
    CookieKeys,
)

FORMAT: Final = "udptime-nts-keys"
"""The C{format} member of a key document."""

VERSION: Final = 1
"""The C{version} of the key documents written."""

DEFAULT_CHECK_INTERVAL: Final = 10.0
"""Seconds between two looks at the key file and the rotation time."""

MAX_DOCUMENT: Final = 65536
"""The longest key document read (a file or a hand-over line)."""


class KeyFileError(ValueError):
    """
    A key document that cannot be read: not JSON, not a udptime key
    document, or with a bad key.
    """


def _timeText(when: float, timespec: str = "auto") -> str:
    """
    C{when} in ISO 8601, UTC: with microseconds when it has a fraction (in
    a key document, so that reading it back gives the same order of keys),
    or to the C{timespec} asked.
    """
    return (
        datetime.fromtimestamp(when, UTC)
        .isoformat(timespec=timespec)
        .replace("+00:00", "Z")
    )


def _readTime(text: object, what: str) -> float:
    if not isinstance(text, str):
        raise KeyFileError(f"{what} is not a date and time")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise KeyFileError(f"{what} {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise KeyFileError(f"{what} {text!r} names no time zone")
    return moment.timestamp()


def dumpKeys(keys: CookieKeys, compact: bool = False) -> bytes:
    """
    The key document of C{keys}: JSON, indented (for a file) or on one line
    (C{compact}, for a hand-over), ending with a newline.
    """
    document = {
        "format": FORMAT,
        "version": VERSION,
        "rotation": keys.rotation,
        "previous": keys.previous,
        "keys": [
            {
                "id": f"{key.id:08x}",
                "created": _timeText(key.created),
                "activates": _timeText(key.activates),
                "key": base64.b64encode(key.material).decode("ascii"),
            }
            for key in keys.keys
        ],
    }
    if compact:
        text = json.dumps(document, separators=(",", ":"))
    else:
        text = json.dumps(document, indent=2)
    return text.encode("ascii") + b"\n"


@dataclass(frozen=True, slots=True)
class KeyDocument:
    """
    What a key document holds.

    @ivar keys: the keys, as listed.
    @ivar rotation: seconds between rotations.
    @ivar previous: previous keys kept.
    """

    keys: tuple[CookieKey, ...]
    rotation: float
    previous: int

    def cookieKeys(
        self, now: float, randomBytes: Callable[[int], bytes] = os.urandom
    ) -> CookieKeys:
        """
        A L{CookieKeys} holding these keys, its current key picked for
        C{now}.
        """
        return CookieKeys(
            self.keys,
            now,
            previous=self.previous,
            rotation=self.rotation,
            randomBytes=randomBytes,
        )

    def applyTo(self, keys: CookieKeys, now: float) -> None:
        """
        Make C{keys} hold these keys and settings, its current key picked
        for C{now}.
        """
        keys.replace(self.keys, now)
        keys.rotation = self.rotation
        keys.previous = self.previous


def parseKeys(data: bytes) -> KeyDocument:
    """
    Read a key document.

    @raise KeyFileError: C{data} is not a valid key document.
    """
    if len(data) > MAX_DOCUMENT:
        raise KeyFileError(f"a key document has at most {MAX_DOCUMENT} bytes")
    try:
        document: Any = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise KeyFileError(f"not JSON: {e}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeyFileError(f'not a key document (no "format": "{FORMAT}")')
    if document.get("version") != VERSION:
        raise KeyFileError(f"key document version {document.get('version')!r}")
    rotation = document.get("rotation")
    previous = document.get("previous")
    if (
        not isinstance(rotation, (int, float))
        or isinstance(rotation, bool)
        or not 0 < rotation < float("inf")
    ):
        raise KeyFileError(f"bad rotation {rotation!r}")
    if not isinstance(previous, int) or isinstance(previous, bool) or previous < 0:
        raise KeyFileError(f"bad number of previous keys {previous!r}")
    entries = document.get("keys")
    if not isinstance(entries, list) or not entries:
        raise KeyFileError("no keys")
    keys = []
    seen = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise KeyFileError(f"key {index} is not an object")
        keyID = entry.get("id")
        if (
            not isinstance(keyID, str)
            or len(keyID) != 8
            or not all(c in "0123456789abcdefABCDEF" for c in keyID)
        ):
            raise KeyFileError(f"key {index} has a bad id {keyID!r}")
        number = int(keyID, 16)
        if number in seen:
            raise KeyFileError(f"two keys have id {keyID}")
        seen.add(number)
        material = entry.get("key")
        try:
            secret = base64.b64decode(str(material), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"key {keyID} is not base64") from None
        if len(secret) != KEY_SIZE:
            raise KeyFileError(f"key {keyID} has {len(secret)} bytes, not {KEY_SIZE}")
        created = _readTime(entry.get("created"), f"key {keyID}'s creation time")
        activates = _readTime(entry.get("activates"), f"key {keyID}'s activation")
        keys.append(CookieKey(number, secret, created, activates))
    return KeyDocument(tuple(keys), float(rotation), previous)


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """
    What tells one version of a file from another: device, inode, size and
    modification time.
    """

    device: int
    inode: int
    size: int
    modified: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileIdentity:
        """
        The identity of the file whose status is C{status}.
        """
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def readKeyFile(path: str) -> tuple[KeyDocument, FileIdentity, int]:
    """
    Read the key file at C{path}.

    @return: the document, the identity of the file read, and its
        permission bits.
    @raise OSError: the file cannot be read.
    @raise KeyFileError: it is not a valid key document.
    """
    with open(path, "rb") as f:
        status = os.fstat(f.fileno())
        data = f.read(MAX_DOCUMENT + 1)
    try:
        document = parseKeys(data)
    except KeyFileError as e:
        raise KeyFileError(f"{path}: {e}") from None
    return document, FileIdentity.of(status), stat.S_IMODE(status.st_mode)


def writeKeyFile(path: str, keys: CookieKeys) -> FileIdentity:
    """
    Write C{keys} to C{path} atomically, mode 0600: a temporary file in the
    same directory, written and C{fsync}ed, renamed over C{path}, and the
    directory C{fsync}ed.

    @return: the identity of the file written.
    @raise OSError: it could not be written (nothing is left behind).
    """
    directory = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    data = dumpKeys(keys)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            identity = FileIdentity.of(os.fstat(fd))
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directoryFD = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directoryFD)
    finally:
        os.close(directoryFD)
    return identity


@contextlib.contextmanager
def writerLock(path: str) -> Iterator[None]:
    """
    Hold the exclusive lock of the writers of key file C{path} (C{flock}
    on C{path.lock}, made mode 0600 if missing).
    """
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def loadOrCreateKeys(
    path: str,
    now: float,
    *,
    create: bool,
    rotation: float = DEFAULT_ROTATION,
    previous: int = DEFAULT_PREVIOUS,
) -> CookieKeys:
    """
    The keys of key file C{path}; when it does not exist and C{create} is
    true, new keys written to it.

    @raise OSError: the file cannot be read, or written.
    @raise KeyFileError: it is not a valid key document.
    """
    with contextlib.ExitStack() as stack:
        if create:
            stack.enter_context(writerLock(path))
        try:
            document, _, _ = readKeyFile(path)
        except FileNotFoundError:
            if not create:
                raise
            keys = CookieKeys.generate(now, rotation=rotation, previous=previous)
            writeKeyFile(path, keys)
            return keys
        return document.cookieKeys(now)


class CookieKeyService(Service):
    """
    Keeps a L{CookieKeys} current: every C{interval} seconds it reloads the
    key file when it changed, rotates the keys when due (if this process
    rotates) or picks the current key by time (if it does not), writes the
    file after a rotation, and tells C{onChange} when the keys changed.

    A key file that cannot be read or written leaves the keys as they are
    (a write is tried again at the next look); each failure is counted and
    logged, one line per distinct failure.

    @ivar keys: the keys kept.
    @ivar path: the key file, or L{None}.
    @ivar rotate: whether this process rotates the keys.
    @ivar reloads: key files read after a change.
    @ivar rotations: rotations made.
    @ivar failures: key files that could not be read or written.
    """

    log = Logger()

    def __init__(
        self,
        keys: CookieKeys,
        reactor: IReactorTime,
        *,
        path: str | None = None,
        rotate: bool = True,
        interval: float = DEFAULT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.time,
        onChange: Callable[[CookieKeys], object] | None = None,
    ) -> None:
        self.keys = keys
        self.reactor = reactor
        self.path = path
        self.rotate = rotate
        self.interval = interval
        self.clock = clock
        self.onChange = onChange
        self.reloads = 0
        self.rotations = 0
        self.failures = 0
        self._identity: FileIdentity | None = None
        self._written = keys.generation
        self._told = keys.generation
        self._lastFailure = ""
        self._loop: LoopingCall | None = None
        if path is not None:
            with contextlib.suppress(OSError):
                self._identity = FileIdentity.of(os.stat(path))

    def startService(self) -> None:
        """
        Look at the keys now, and every C{interval} seconds.
        """
        Service.startService(self)
        loop = LoopingCall(self.check)
        loop.clock = self.reactor
        loop.start(self.interval, now=True)
        self._loop = loop

    def stopService(self) -> Any:
        """
        Stop looking.
        """
        Service.stopService(self)
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return None

    def check(self) -> None:
        """
        One look: reload, rotate or refresh, write, tell.
        """
        now = self.clock()
        if self.path is not None and self.rotate:
            try:
                with writerLock(self.path):
                    self._reload(now)
                    self._rotate(now)
                    self._write()
            except OSError as e:
                self._failed(f"cannot lock the NTS key file {self.path}: {e}")
        else:
            if self.path is not None:
                self._reload(now)
            if self.rotate:
                self._rotate(now)
            else:
                self.keys.refresh(now)
        if self.onChange is not None and self.keys.generation != self._told:
            self._told = self.keys.generation
            self.onChange(self.keys)

    def _reload(self, now: float) -> None:
        assert self.path is not None
        try:
            identity = FileIdentity.of(os.stat(self.path))
            if identity == self._identity:
                return
            document, identity, mode = readKeyFile(self.path)
        except FileNotFoundError as e:
            # A rotating process writes it again at once.
            self._identity = None
            self._failed(f"cannot read the NTS key file: {e}")
            return
        except (OSError, KeyFileError) as e:
            self._failed(f"cannot read the NTS key file: {e}")
            return
        document.applyTo(self.keys, now)
        self._identity = identity
        self._written = self.keys.generation
        self._lastFailure = ""
        self.reloads += 1
        self.log.info(
            "NTS key file {path} read: current key {current}",
            path=self.path,
            current=f"{self.keys.current.id:08x}",
        )
        if mode & 0o077:
            self.log.warn(
                "NTS key file {path} can be read by others (mode {mode:o}):"
                " anyone who reads it can forge cookies",
                path=self.path,
                mode=mode,
            )

    def _rotate(self, now: float) -> None:
        if self.keys.rotateIfDue(now):
            self.rotations += 1
            self.log.info(
                "NTS keys rotated: current key {current}",
                current=f"{self.keys.current.id:08x}",
            )

    def _write(self) -> None:
        assert self.path is not None
        if self.keys.generation == self._written and self._identity is not None:
            return
        try:
            self._identity = writeKeyFile(self.path, self.keys)
        except OSError as e:
            self._failed(f"cannot write the NTS key file {self.path}: {e}")
            return
        self._written = self.keys.generation
        self._lastFailure = ""

    def _failed(self, message: str) -> None:
        self.failures += 1
        if message != self._lastFailure:
            self._lastFailure = message
            self.log.error("{message}", message=message)


def keyUpdateLine(keys: CookieKeys) -> bytes:
    """
    The line a supervisor writes to a worker's standard input to hand it
    C{keys}: the key document on one line.
    """
    return dumpKeys(keys, compact=True)


def readKeyUpdate(
    fd: int, timeout: float, clock: Callable[[], float] = time.monotonic
) -> KeyDocument:
    """
    Read the first key document from C{fd} (a worker's standard input),
    waiting at most C{timeout} seconds for it.

    @raise TimeoutError: no whole line arrived in time.
    @raise EOFError: the pipe closed first.
    @raise KeyFileError: the line is not a key document.
    """
    deadline = clock() + timeout
    line = bytearray()
    while b"\n" not in line:
        left = deadline - clock()
        if left <= 0:
            raise TimeoutError(f"no NTS keys on descriptor {fd} in {timeout:g} s")
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        # One byte at a time: what follows the first line is left in the
        # pipe for the KeyUpdateReader.
        chunk = os.read(fd, 1)
        if not chunk:
            raise EOFError(f"descriptor {fd} closed before the NTS keys")
        line += chunk
        if len(line) > MAX_DOCUMENT:
            raise KeyFileError("the NTS key hand-over line is too long")
    return parseKeys(bytes(line))


class KeyUpdateReader(BriefingReader):
    """
    Reads key documents, one a line, from a descriptor (a worker's standard
    input) and puts their keys into a L{CookieKeys}: a
    L{BriefingReader<udptime.briefing.BriefingReader>} that takes in the
    lines of L{FORMAT} (L{keyUpdateHandler}).  A line that is not a key
    document, or is too long, is logged and ignored.

    @ivar updates: key documents applied.
    @ivar rejected: lines ignored.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        fd: int,
        keys: CookieKeys,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(reactor, fd, "NTS key hand-over")
        self.handle(FORMAT, keyUpdateHandler(keys, clock))


def keyUpdateHandler(
    keys: CookieKeys, clock: Callable[[], float] = time.time
) -> Callable[[bytes], None]:
    """
    The handler of a worker's key document lines (see
    L{udptime.briefing}): each replaces C{keys}' keys.

    @raise KeyFileError: (from the handler) a line is not a key document.
    """

    def apply(line: bytes) -> None:
        parseKeys(line).applyTo(keys, clock())

    return apply


def _describe(keys: CookieKeys) -> list[str]:
    following = keys.next
    lines = []
    for key in keys.keys:
        if key is keys.current:
            role = "current"
        elif following is not None and key is following:
            role = "next"
        elif key.activates <= keys.current.activates:
            role = "previous"
        else:
            role = "later"
        lines.append(
            f"{key.id:08x}  {role:8}  created {_timeText(key.created, 'seconds')}"
            f"  activates {_timeText(key.activates, 'seconds')}"
        )
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="udptime-nts-keys",
        description="Make, rotate and show udptime's NTS cookie key files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a new key file")
    new.add_argument("file")
    new.add_argument(
        "--rotation",
        type=float,
        default=DEFAULT_ROTATION,
        help="seconds between rotations (default: a week)",
    )
    new.add_argument(
        "--previous",
        type=int,
        default=DEFAULT_PREVIOUS,
        help="keys kept after they stop sealing (default: 2)",
    )
    new.add_argument(
        "--force", action="store_true", help="replace an existing key file"
    )
    rotate = commands.add_parser(
        "rotate", help="make the next key current now and add a new next key"
    )
    rotate.add_argument("file")
    show = commands.add_parser("show", help="list the keys (never their secrets)")
    show.add_argument("file")
    return parser


def main(
    argv: Sequence[str] | None = None,
    clock: Callable[[], float] = time.time,
    out: Any = None,
    err: Any = None,
) -> int:
    """
    The C{udptime-nts-keys} command; its exit status.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    options = _parser().parse_args(argv)
    path: str = options.file
    now = clock()
    try:
        if options.command == "new":
            if not 0 < options.rotation < float("inf") or options.previous < 0:
                raise KeyFileError(
                    "--rotation must be positive, --previous not negative"
                )
            with writerLock(path):
                if os.path.lexists(path) and not options.force:
                    raise KeyFileError(f"{path} exists (--force replaces it)")
                keys = CookieKeys.generate(
                    now, rotation=options.rotation, previous=options.previous
                )
                writeKeyFile(path, keys)
        elif options.command == "rotate":
            with writerLock(path):
                document, _, _ = readKeyFile(path)
                keys = document.cookieKeys(now)
                keys.rotate(now)
                writeKeyFile(path, keys)
            if keys.current.id not in {key.id for key in document.keys}:
                print(
                    f"udptime-nts-keys: warning: the file's next key had already"
                    f" activated, so the new current key {keys.current.id:08x} is"
                    " one no host had: hosts without this file answer its"
                    " cookies with NTS NAKs until they have it (rotate before"
                    " the next key activates)",
                    file=err,
                )
        else:
            document, _, mode = readKeyFile(path)
            keys = document.cookieKeys(now)
            if mode & 0o077:
                print(
                    f"udptime-nts-keys: warning: {path} can be read by others"
                    f" (mode {mode:o})",
                    file=err,
                )
    except (OSError, KeyFileError) as e:
        print(f"udptime-nts-keys: {e}", file=err)
        return 1
    for line in _describe(keys):
        print(line, file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
