"""Encryption at rest (01 §11, 02 §15): AEAD cipher, algorithm choice and the key file.

Every encrypted blob is ``nonce(12) ‖ ciphertext ‖ tag(16)`` with no associated data. The
algorithm used for new blobs is chosen from the CPU (AES-256-GCM with hardware AES, else
ChaCha20-Poly1305), and every blob's algorithm is recorded next to it (``enc_alg``) so a
file written on one machine is readable on another.

Nonces. Both algorithms lose their security if a nonce is ever used twice under one key,
but a nonce need not be unpredictable, only unique. So instead of asking the kernel for 12
random bytes per blob (a system call on every WAL record, about three times the cost of
what replaces it), a nonce is ``prefix(8) ‖ counter(4, big-endian)``: the prefix is drawn
once per process with ``os.urandom`` and the counter counts the blobs encrypted under it
(the "deterministic construction" of NIST SP 800-38D §8.2.1, with a random fixed field).

- Within a process a nonce never repeats: the counter never goes back, and before it
  would wrap (:data:`NONCE_COUNTER_LIMIT`) a new prefix is drawn, one this process has not
  used before, and the count restarts.
- Another process (a restart of the server, the WAL prefetch worker, a CLI restoring a
  backup) draws its own prefix, and a child made by ``fork`` draws a new one at once
  (``os.register_at_fork``), since it would otherwise go on from its parent's counter
  with its parent's prefix. Two processes share a prefix, the only way their nonces can
  collide, with probability 2^-64 per pair (a million processes under one key: ~2^-25).
  Random 96-bit nonces reach that risk sooner once every process encrypts more than
  ~65,000 blobs, as a server's WAL writer does.

The source is shared by every :class:`Cipher` of the process (whatever their keys), and
it is safe to use from several threads: snapshots and backups encrypt in worker threads.
Decryption reads the nonce from the blob, so blobs of either kind read the same way.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import platform
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tokmesh.domain.errors import E, TokMeshError

ALG_AES = "aes-256-gcm"
ALG_CHACHA = "chacha20-poly1305"
ALGORITHMS: tuple[str, ...] = (ALG_AES, ALG_CHACHA)

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: Bytes an encryption adds to its plaintext (nonce + tag).
OVERHEAD = NONCE_BYTES + TAG_BYTES
#: A nonce is a per-process random prefix followed by a big-endian counter (module doc).
NONCE_PREFIX_BYTES = 8
NONCE_COUNTER_BYTES = NONCE_BYTES - NONCE_PREFIX_BYTES
#: Nonces made under one prefix before a new prefix is drawn: the counter's whole range.
#: Read on every call, so tests can lower it to see the redraw.
NONCE_COUNTER_LIMIT = 1 << (8 * NONCE_COUNTER_BYTES)

KEY_FILE_NAME = ".encryption_key"

_log = logging.getLogger("tokmesh.storage")
_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")


class DecryptError(Exception):
    """An AEAD blob did not authenticate (wrong key, tampering) or cannot be decrypted."""


class StorageFatalError(TokMeshError):
    """Storage cannot continue safely (``TM-SYS-5001``): undecryptable data, a plaintext
    file where encryption is mandatory, an unusable key file, a latched writer failure.

    The message names what and where (file, offset) but never key material or record
    contents.
    """

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(E.SYS_STORAGE, message, details=dict(details) if details else None)


def _cpu_flags(cpuinfo: str) -> set[str]:
    """All words on the ``flags`` (x86) and ``Features`` (ARM) lines of /proc/cpuinfo."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def select_algorithm(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """The preferred algorithm for new blobs on this CPU (02 §15).

    x86-64 needs the ``aes`` and ``pclmulqdq`` flags, ARM64 ``aes`` and ``pmull``; anything
    else, or an unreadable /proc/cpuinfo, selects ChaCha20-Poly1305 (fast in software).
    ``cpuinfo``/``machine`` are injectable for tests.
    """
    if machine is None:
        machine = platform.machine()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ALG_CHACHA
    flags = _cpu_flags(cpuinfo)
    arch = machine.lower()
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        needed = {"aes", "pclmulqdq"}
    elif arch in ("aarch64", "arm64", "armv8l", "armv8b"):
        needed = {"aes", "pmull"}
    else:
        return ALG_CHACHA
    return ALG_AES if needed <= flags else ALG_CHACHA


class _NonceSource:
    """Unique 12-byte nonces for this process: ``prefix ‖ counter`` (see the module doc)."""

    __slots__ = ("_lock", "_state", "_used")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Every prefix this process (and, after a fork, its parent) has drawn.
        self._used: set[bytes] = set()
        # The prefix and the counter counting under it are one object, swapped as a whole:
        # a thread never pairs a number drawn from one counter with another prefix.
        self._state = self._fresh_state()

    def _fresh_state(self) -> tuple[bytes, Iterator[int]]:
        prefix = os.urandom(NONCE_PREFIX_BYTES)
        while prefix in self._used:  # 2^-64 per earlier prefix; costs nothing to exclude
            prefix = os.urandom(NONCE_PREFIX_BYTES)
        self._used.add(prefix)
        return prefix, itertools.count()

    def next(self) -> bytes:
        """A nonce this process has not made before."""
        while True:
            state = self._state
            prefix, counter = state
            # itertools.count's next() is one C call that holds the GIL throughout, so two
            # threads never get the same number: no lock on the common path.
            n = next(counter)
            if n < NONCE_COUNTER_LIMIT:
                return prefix + n.to_bytes(NONCE_COUNTER_BYTES, "big")
            # This prefix is used up: the first thread here draws a new one, the others
            # find it replaced and retry with it.
            with self._lock:
                if self._state is state:
                    self._state = self._fresh_state()

    def reset_after_fork(self) -> None:
        """In a forked child: a new prefix (the parent goes on with its own) and a new lock
        (the parent's may have been held by a thread that does not exist here)."""
        self._lock = threading.Lock()
        self._state = self._fresh_state()


_NONCES = _NonceSource()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_NONCES.reset_after_fork)


class Cipher:
    """AEAD over one 32-byte key, able to decrypt both algorithms.

    ``alg`` is the algorithm used by :meth:`encrypt`; :meth:`decrypt` always follows the
    algorithm recorded with the blob. Instances are thread-safe (the underlying
    ``cryptography`` objects hold no per-call state, and the process's nonce source hands
    each call its own nonce).
    """

    __slots__ = ("_aeads", "_key", "alg")

    def __init__(self, key: bytes, alg: str | None = None) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("encryption key must be exactly 32 bytes")
        if alg is None:
            alg = select_algorithm()
        if alg not in ALGORITHMS:
            raise ValueError(f"unknown encryption algorithm {alg!r}")
        self.alg = alg
        self._key = key
        self._aeads: dict[str, AESGCM | ChaCha20Poly1305] = {
            ALG_AES: AESGCM(key),
            ALG_CHACHA: ChaCha20Poly1305(key),
        }

    def secret(self) -> bytes:
        """The raw key, only to hand to a TokMesh worker process over a private pipe
        (:mod:`tokmesh.storage.wal_prefetch`); never log or persist it."""
        return self._key

    def encrypt(self, plaintext: bytes) -> bytes:
        """``nonce ‖ ciphertext ‖ tag`` of ``plaintext`` under :attr:`alg`, with a nonce this
        process has never used (prefix ‖ counter, see the module doc)."""
        nonce = _NONCES.next()
        return nonce + self._aeads[self.alg].encrypt(nonce, plaintext, None)

    def decrypt(self, blob: bytes | memoryview, alg: str) -> bytes:
        """Plaintext of ``blob`` encrypted with ``alg``; :class:`DecryptError` if it does not
        authenticate, is too short, or names an unknown algorithm."""
        aead = self._aeads.get(alg)
        if aead is None:
            raise DecryptError(f"unknown encryption algorithm {alg!r}")
        if len(blob) < OVERHEAD:
            raise DecryptError("encrypted blob shorter than nonce and tag")
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
        except InvalidTag:
            raise DecryptError(
                "authentication tag mismatch (wrong encryption key or tampered data)"
            ) from None


def parse_key_hex(value: str) -> bytes:
    """The 32-byte key from its 64-hex-char form; ``ValueError`` otherwise (the message
    never echoes the value: it is a secret)."""
    value = value.strip()
    if not _HEX64_RE.fullmatch(value):
        raise ValueError("wal_encryption_key must be exactly 64 hexadecimal characters")
    return bytes.fromhex(value)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a create/rename/unlink inside it is durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: errno values of a write refused because the file system (or the user's quota) is full.
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
PROBE_FILE_NAME = ".write_test"


def out_of_space(exc: BaseException) -> bool:
    """True when ``exc`` is an ``OSError`` saying the disk or the quota is full."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS


def probe_write(directory: Path) -> None:
    """Create, write and delete a small file in ``directory``; raises the ``OSError``.

    Tells whether a file can be written there now. A permission problem, a read-only
    mount and a full disk all fail it; :func:`out_of_space` tells the last one apart.
    """
    probe = Path(directory) / PROBE_FILE_NAME
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
    finally:
        # A probe file left behind by a failing unlink is two bytes at most; the
        # error that matters is the one from creating or writing it.
        with contextlib.suppress(OSError):
            probe.unlink()


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0750 when missing (01 §8.1)."""
    if path.is_dir():
        return
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask; set it explicitly for the directory we made.
    os.chmod(path, 0o750)


def _read_key_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageFatalError(
            f"cannot read encryption key file {path.name}: {type(exc).__name__}",
            {"file": path.name},
        ) from None
    try:
        key = parse_key_hex(text)
    except ValueError:
        raise StorageFatalError(
            f"encryption key file {path.name} does not hold 64 hex characters",
            {"file": path.name},
        ) from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # A key readable by others is a leak waiting to happen; tighten it rather than fail.
        _log.warning("encryption key file %s had mode %o; setting 0600", path.resolve(), mode)
        os.chmod(path, 0o600)
    return key


def load_or_create_key(wal_dir: Path, configured_hex: str) -> bytes:
    """The at-rest key (01 §11).

    A configured value must be 64 hex chars (``ValueError`` otherwise, mapped to a
    ``TM-CFG-*`` error by the config layer). An empty value reads ``<wal_dir>/.encryption_key``
    or, when absent, generates 32 random bytes and persists them as hex (mode 0600, written
    to a temp file, fsynced, then linked into place so that two concurrent starts cannot end
    up with different keys) and returns them. An unreadable or malformed key file is fatal
    (:class:`StorageFatalError`): generating a new key would orphan all existing data.
    """
    if configured_hex:
        return parse_key_hex(configured_hex)
    wal_dir = Path(wal_dir)
    ensure_dir(wal_dir)
    path = wal_dir / KEY_FILE_NAME
    if path.exists():
        return _read_key_file(path)
    key = os.urandom(KEY_BYTES)
    tmp = wal_dir / f"{KEY_FILE_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails if the target exists: whoever linked first wins, the other reuses it.
        os.link(tmp, path)
    except FileExistsError:
        return _read_key_file(path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(wal_dir)
    _log.warning(
        "generated a new at-rest encryption key in %s: back it up, the data cannot be read "
        "without it",
        path.resolve(),
        extra={"key_file": str(path.resolve())},
    )
    return key
