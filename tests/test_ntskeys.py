"""
Tests for L{udptime.ntskeys}: the key file, the key service that rotates
or follows it, the operator command, and the hand-over of keys to workers
through a pipe.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from udptime import ntskeys
from udptime.ntscookie import DEFAULT_ROTATION, CookieKeys, SessionKeys
from udptime.ntskeys import (
    CookieKeyService,
    KeyFileError,
    KeyUpdateReader,
    dumpKeys,
    keyUpdateLine,
    loadOrCreateKeys,
    parseKeys,
    readKeyFile,
    readKeyUpdate,
    writeKeyFile,
)

NOW = 1_800_000_000.25
WEEK = DEFAULT_ROTATION
SESSION = SessionKeys(bytes(range(32)), bytes(range(32, 64)))


def temporaryDirectory(case: SynchronousTestCase) -> str:
    directory = tempfile.mkdtemp(prefix="udptime-ntskeys-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def readBytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def document(**changes: Any) -> bytes:
    """
    A valid key document, with top-level members changed.
    """
    base = json.loads(dumpKeys(CookieKeys.generate(NOW)))
    base.update(changes)
    return json.dumps(base).encode()


def documentWithKey(**changes: Any) -> bytes:
    """
    A valid key document whose first key has members changed.
    """
    base = json.loads(dumpKeys(CookieKeys.generate(NOW)))
    base["keys"][0].update(changes)
    return json.dumps(base).encode()


class RecordingLog:
    """
    A L{Logger} whose events are kept.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.log = Logger(observer=self.events.append)

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(event) for event in self.events]


class DocumentTests(SynchronousTestCase):
    """
    L{dumpKeys} and L{parseKeys}.
    """

    def test_roundTrip(self) -> None:
        """
        A key document reads back as the keys, settings and order it was
        made from; times keep their fractions, so the current key is the
        same.
        """
        keys = CookieKeys.generate(NOW, rotation=3600.0, previous=1)
        keys.rotate(NOW + 0.5)
        for compact in (False, True):
            with self.subTest(compact=compact):
                data = dumpKeys(keys, compact)
                parsed = parseKeys(data)
                self.assertEqual(
                    [(k.id, k.material, k.created, k.activates) for k in parsed.keys],
                    [(k.id, k.material, k.created, k.activates) for k in keys.keys],
                )
                self.assertEqual((parsed.rotation, parsed.previous), (3600.0, 1))
                copy = parsed.cookieKeys(NOW + 1)
                self.assertEqual(copy.current.id, keys.current.id)
                self.assertEqual(copy.open(keys.seal(SESSION)), SESSION)
        self.assertEqual(dumpKeys(keys, True).count(b"\n"), 1)

    def test_format(self) -> None:
        """
        The document is the documented JSON: format, version, rotation,
        previous, and keys with a hex id, ISO 8601 UTC times and base64.
        """
        keys = CookieKeys.generate(1_800_000_000.0)
        data = json.loads(dumpKeys(keys))
        self.assertEqual(
            sorted(data), ["format", "keys", "previous", "rotation", "version"]
        )
        self.assertEqual((data["format"], data["version"]), ("udptime-nts-keys", 1))
        first = data["keys"][0]
        self.assertEqual(first["id"], f"{keys.current.id:08x}")
        self.assertEqual(first["created"], "2027-01-15T08:00:00Z")
        self.assertEqual(len(first["key"]), 44)

    def test_bad(self) -> None:
        """
        Documents that cannot be keys are refused with a reason.
        """
        cases = {
            "not JSON": b"{",
            "not an object": b"[]",
            "other format": document(format="other"),
            "other version": document(version=2),
            "bad rotation": document(rotation=0),
            "rotation not a number": document(rotation="week"),
            "bad previous": document(previous=-1),
            "previous a boolean": document(previous=True),
            "no keys": document(keys=[]),
            "key not an object": document(keys=[1]),
            "bad id": documentWithKey(id="xyz"),
            "bad base64": documentWithKey(key="!!!"),
            "short key": documentWithKey(key="AAAA"),
            "bad time": documentWithKey(created="yesterday"),
            "time without zone": documentWithKey(activates="2027-01-01T00:00:00"),
            "too long": b" " * 70000,
        }
        for name, data in cases.items():
            with self.subTest(name=name):
                self.assertRaises(KeyFileError, parseKeys, data)
        twice = json.loads(document())
        twice["keys"][1]["id"] = twice["keys"][0]["id"]
        self.assertRaises(KeyFileError, parseKeys, json.dumps(twice).encode())


class FileTests(SynchronousTestCase):
    """
    Writing and reading key files.
    """

    def test_writeAtomically(self) -> None:
        """
        A key file is written mode 0600 whatever the umask, with nothing
        left beside it, and reads back with the identity returned.
        """
        directory = temporaryDirectory(self)
        path = os.path.join(directory, "keys.json")
        old = os.umask(0)
        try:
            identity = writeKeyFile(path, CookieKeys.generate(NOW))
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(directory), ["keys.json"])
        _, readIdentity, mode = readKeyFile(path)
        self.assertEqual((readIdentity, mode), (identity, 0o600))

    def test_replaceIsANewFile(self) -> None:
        """
        Writing again replaces the file with a new one (a reader that holds
        the old one open keeps reading the old keys whole).
        """
        directory = temporaryDirectory(self)
        path = os.path.join(directory, "keys.json")
        first = writeKeyFile(path, CookieKeys.generate(NOW))
        with open(path, "rb") as reader:
            second = writeKeyFile(path, CookieKeys.generate(NOW))
            self.assertNotEqual(first, second)
            old = parseKeys(reader.read())
        self.assertEqual(len(old.keys), 2)

    def test_writeFails(self) -> None:
        """
        A file that cannot be written raises, leaving nothing behind.
        """
        directory = temporaryDirectory(self)
        path = os.path.join(directory, "missing", "keys.json")
        self.assertRaises(OSError, writeKeyFile, path, CookieKeys.generate(NOW))

    def test_loadOrCreate(self) -> None:
        """
        A missing key file is made when asked, read when present, and an
        error when it must exist.
        """
        directory = temporaryDirectory(self)
        path = os.path.join(directory, "keys.json")
        self.assertRaises(FileNotFoundError, loadOrCreateKeys, path, NOW, create=False)
        made = loadOrCreateKeys(path, NOW, create=True, rotation=60.0)
        self.assertEqual(made.rotation, 60.0)
        read = loadOrCreateKeys(path, NOW, create=False)
        self.assertEqual([k.id for k in read.keys], [k.id for k in made.keys])
        with open(path, "w") as f:
            f.write("{}")
        self.assertRaises(KeyFileError, loadOrCreateKeys, path, NOW, create=True)


class FakeTime:
    """
    A wall clock for the key service, moved by hand.
    """

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ServiceTests(SynchronousTestCase):
    """
    L{CookieKeyService}: rotating a key file, following it, and keys of
    one process.
    """

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.path = os.path.join(self.directory, "keys.json")
        self.time = FakeTime()
        self.reactor = Clock()

    def service(
        self, keys: CookieKeys, rotate: bool, path: str | None = "", **kw: Any
    ) -> CookieKeyService:
        service = CookieKeyService(
            keys,
            self.reactor,
            path=self.path if path == "" else path,
            rotate=rotate,
            clock=self.time,
            **kw,
        )
        recording = RecordingLog()
        service.log = recording.log
        service.recording = recording  # type: ignore[attr-defined]
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_rotatorAndFollower(self) -> None:
        """
        The rotating process rotates when the next key's time comes and
        writes the file; a follower reloads it; cookies sealed by either
        open in the other, before and after.
        """
        rotatorKeys = loadOrCreateKeys(self.path, NOW, create=True)
        followerKeys = loadOrCreateKeys(self.path, NOW, create=False)
        rotator = self.service(rotatorKeys, rotate=True)
        follower = self.service(followerKeys, rotate=False)
        old = rotatorKeys.seal(SESSION)
        self.time.now = NOW + WEEK + 1
        self.reactor.advance(10)
        self.assertEqual(rotator.rotations, 1)
        self.assertEqual(follower.reloads, 1)
        self.assertEqual(
            [k.id for k in followerKeys.keys], [k.id for k in rotatorKeys.keys]
        )
        self.assertEqual(followerKeys.current.id, rotatorKeys.current.id)
        for sealer, opener in [
            (rotatorKeys, followerKeys),
            (followerKeys, rotatorKeys),
        ]:
            self.assertEqual(opener.open(sealer.seal(SESSION)), SESSION)
        self.assertEqual(followerKeys.open(old), SESSION)
        self.assertEqual(readKeyFile(self.path)[0].keys[-1].id, rotatorKeys.keys[-1].id)

    def test_followerPromotesByTime(self) -> None:
        """
        A follower makes the next key current at its time, before the
        rotating process has written the file again.
        """
        keys = loadOrCreateKeys(self.path, NOW, create=True)
        following = keys.next
        assert following is not None
        self.service(keys, rotate=False)
        self.time.now = NOW + WEEK
        self.reactor.advance(10)
        self.assertIs(keys.current, following)

    def test_badFileKept(self) -> None:
        """
        A key file that turns bad leaves the keys as they were, is counted
        and logged once; once good again it is read.
        """
        keys = loadOrCreateKeys(self.path, NOW, create=True)
        service = self.service(keys, rotate=False)
        good = readBytes(self.path)
        with open(self.path, "w") as f:
            f.write("not json")
        before = keys.keys
        self.reactor.advance(10)
        self.reactor.advance(10)
        self.assertEqual(keys.keys, before)
        self.assertEqual(service.failures, 2)
        texts = service.recording.texts()  # type: ignore[attr-defined]
        self.assertEqual(len([t for t in texts if "cannot read" in t]), 1)
        other = CookieKeys.generate(NOW)
        writeKeyFile(self.path, other)
        self.reactor.advance(10)
        self.assertEqual([k.id for k in keys.keys], [k.id for k in other.keys])
        self.assertNotEqual(good, readBytes(self.path))

    def test_rotatorRewritesDeletedFile(self) -> None:
        """
        The rotating process writes the key file again when it is deleted.
        """
        keys = loadOrCreateKeys(self.path, NOW, create=True)
        self.service(keys, rotate=True)
        os.unlink(self.path)
        self.reactor.advance(10)
        self.assertEqual(
            [k.id for k in readKeyFile(self.path)[0].keys], [k.id for k in keys.keys]
        )

    def test_rotatorReadsOperatorRotation(self) -> None:
        """
        The rotating process reads a file the operator rotated, and rotates
        on from it.
        """
        keys = loadOrCreateKeys(self.path, NOW, create=True)
        service = self.service(keys, rotate=True)
        out = io.StringIO()
        self.time.now = NOW + 60
        self.assertEqual(
            ntskeys.main(["rotate", self.path], clock=self.time, out=out), 0
        )
        self.reactor.advance(10)
        self.assertEqual(service.reloads, 1)
        self.assertEqual(
            keys.current.id,
            readKeyFile(self.path)[0].cookieKeys(self.time.now).current.id,
        )

    def test_readableByOthers(self) -> None:
        """
        A key file others can read is used, with a warning.
        """
        keys = loadOrCreateKeys(self.path, NOW, create=True)
        service = self.service(keys, rotate=False)
        writeKeyFile(self.path, CookieKeys.generate(NOW))
        os.chmod(self.path, 0o644)
        self.reactor.advance(10)
        texts = service.recording.texts()  # type: ignore[attr-defined]
        self.assertTrue(any("can be read by others" in t for t in texts), texts)

    def test_processKeys(self) -> None:
        """
        Without a key file the process rotates its own keys, and tells
        C{onChange} (the hand-over to workers) each time.
        """
        keys = CookieKeys.generate(NOW)
        told: list[int] = []
        self.service(
            keys, rotate=True, path=None, onChange=lambda k: told.append(k.current.id)
        )
        self.assertEqual(told, [])
        self.time.now = NOW + WEEK
        self.reactor.advance(10)
        self.assertEqual(told, [keys.current.id])
        self.reactor.advance(10)
        self.assertEqual(len(told), 1)


class CommandTests(SynchronousTestCase):
    """
    The C{udptime-nts-keys} command.
    """

    def command(self, *arguments: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = ntskeys.main(list(arguments), clock=lambda: NOW, out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def test_newRotateShow(self) -> None:
        """
        C{new} makes a key file with a current and a next key; C{rotate}
        makes the next one current; C{show} lists them without secrets.
        """
        path = os.path.join(temporaryDirectory(self), "keys.json")
        status, out, err = self.command("new", path, "--rotation", "86400")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            [line.split()[1] for line in out.splitlines()], ["current", "next"]
        )
        keys = readKeyFile(path)[0]
        self.assertEqual(keys.rotation, 86400.0)
        status, out, err = self.command("rotate", path)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            [line.split()[1] for line in out.splitlines()],
            ["previous", "current", "next"],
        )
        status, out, err = self.command("show", path)
        self.assertEqual(status, 0)
        for key in readKeyFile(path)[0].keys:
            self.assertIn(f"{key.id:08x}", out)
            self.assertNotIn(key.material.hex(), out)
        self.assertNotIn('key":', out)

    def test_lateRotationWarns(self) -> None:
        """
        C{rotate} after the next key's activation time makes a key no host
        had current at once, and warns; before it, it makes the next key
        current, which every host holding the file has, and says nothing.
        """
        path = os.path.join(temporaryDirectory(self), "keys.json")
        self.command("new", path, "--rotation", "100")
        held = {key.id for key in readKeyFile(path)[0].keys}
        out, err = io.StringIO(), io.StringIO()
        status = ntskeys.main(
            ["rotate", path], clock=lambda: NOW + 90, err=err, out=out
        )
        self.assertEqual((status, err.getvalue()), (0, ""))
        current = readKeyFile(path)[0].cookieKeys(NOW + 90).current
        self.assertIn(current.id, held)

        held = {key.id for key in readKeyFile(path)[0].keys}
        status = ntskeys.main(
            ["rotate", path], clock=lambda: NOW + 300, err=err, out=out
        )
        self.assertEqual(status, 0)
        current = readKeyFile(path)[0].cookieKeys(NOW + 300).current
        self.assertNotIn(current.id, held)
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        self.assertIn(f"new current key {current.id:08x}", err.getvalue())

    def test_newRefusesToReplace(self) -> None:
        """
        C{new} does not replace a key file unless forced.
        """
        path = os.path.join(temporaryDirectory(self), "keys.json")
        self.command("new", path)
        before = readBytes(path)
        status, _, err = self.command("new", path)
        self.assertEqual(status, 1)
        self.assertIn("exists", err)
        self.assertEqual(len(err.splitlines()), 1)
        self.assertEqual(readBytes(path), before)
        self.assertEqual(self.command("new", path, "--force")[0], 0)
        self.assertNotEqual(readBytes(path), before)

    def test_errors(self) -> None:
        """
        A missing or bad file: one line on standard error, status 1.
        """
        directory = temporaryDirectory(self)
        bad = os.path.join(directory, "bad.json")
        with open(bad, "w") as f:
            f.write("[]")
        for arguments in (
            ("show", os.path.join(directory, "missing.json")),
            ("rotate", bad),
            ("new", os.path.join(directory, "x.json"), "--rotation", "0"),
        ):
            with self.subTest(arguments=arguments):
                status, out, err = self.command(*arguments)
                self.assertEqual((status, out), (1, ""))
                self.assertEqual(len(err.splitlines()), 1)
                self.assertTrue(err.startswith("udptime-nts-keys: "))


def pipe(case: SynchronousTestCase) -> tuple[int, int]:
    reading, writing = os.pipe()
    for fd in (reading, writing):
        case.addCleanup(_closeQuietly, fd)
    return reading, writing


def _closeQuietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class FirstKeysTests(SynchronousTestCase):
    """
    L{readKeyUpdate}: a worker's first keys, read before it serves.
    """

    def test_firstLineOnly(self) -> None:
        """
        The first line is read and parsed; what follows stays in the pipe.
        """
        reading, writing = pipe(self)
        keys = CookieKeys.generate(NOW)
        os.write(writing, keyUpdateLine(keys) + b"rest")
        document = readKeyUpdate(reading, 5.0)
        self.assertEqual([k.id for k in document.keys], [k.id for k in keys.keys])
        self.assertEqual(os.read(reading, 10), b"rest")

    def test_closed(self) -> None:
        """
        A pipe closed before a whole line is an error.
        """
        reading, writing = pipe(self)
        os.write(writing, b"{")
        os.close(writing)
        self.assertRaises(EOFError, readKeyUpdate, reading, 5.0)

    def test_nothing(self) -> None:
        """
        Nothing in time is an error.
        """
        reading, _ = pipe(self)
        self.assertRaises(TimeoutError, readKeyUpdate, reading, 0.01)


async def _poll(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(globalReactor, 0.01, lambda: None)


class HandOverProcessTests(SynchronousTestCase):
    """
    The hand-over between two processes: a child reads its keys from its
    standard input, as a worker does.
    """

    def test_childReadsKeys(self) -> None:
        """
        A child process given the key line on its standard input holds the
        same keys: a cookie sealed by the parent opens in the child.
        """
        keys = CookieKeys.generate(time.time())
        cookie = keys.seal(SESSION)
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, time; from udptime.ntskeys import readKeyUpdate;"
                " keys = readKeyUpdate(0, 10.0).cookieKeys(time.time());"
                " print(keys.open(bytes.fromhex(sys.argv[1])).c2s.hex())",
                cookie.hex(),
            ],
            input=keyUpdateLine(keys),
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(child.returncode, 0, child.stderr)
        self.assertEqual(child.stdout.decode().strip(), SESSION.c2s.hex())


class KeyUpdateReaderTests(TestCase):
    """
    L{KeyUpdateReader}: keys handed down while a worker runs.
    """

    def start(self, keys: CookieKeys) -> tuple[KeyUpdateReader, int]:
        reading, writing = pipe(self)
        reader = KeyUpdateReader(globalReactor, reading, keys, clock=lambda: NOW + 2)  # type: ignore[arg-type]
        recording = RecordingLog()
        reader.log = recording.log
        reader.startReading()
        self.addCleanup(reader.stopReading)
        return reader, writing

    def test_updates(self) -> None:
        """
        Each line replaces the keys; bad and overlong lines are counted and
        skipped; the end of the pipe stops the reader.
        """
        keys = CookieKeys.generate(NOW)
        reader, writing = self.start(keys)
        rotated = CookieKeys.generate(NOW)
        rotated.rotate(NOW + 1)

        async def exercise() -> None:
            os.write(writing, b"not a document\n")
            # The overlong line in pieces the pipe takes without blocking.
            for _ in range(7):
                os.write(writing, b"x" * 10000)
                await deferLater(globalReactor, 0.01, lambda: None)
            os.write(writing, b"y\n" + keyUpdateLine(rotated)[:10])
            os.write(writing, keyUpdateLine(rotated)[10:])
            await _poll(lambda: reader.updates == 1, "the key update")
            self.assertEqual([k.id for k in keys.keys], [k.id for k in rotated.keys])
            self.assertEqual(keys.current.id, rotated.current.id)
            self.assertEqual(reader.rejected, 2)
            os.close(writing)
            await _poll(
                lambda: reader not in globalReactor.getReaders(),  # type: ignore[attr-defined]
                "the reader to stop",
            )

        return Deferred.fromCoroutine(exercise())
