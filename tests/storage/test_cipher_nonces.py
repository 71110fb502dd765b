"""Nonces of the at-rest cipher: per-process random prefix ‖ counter, never reused (issue 17)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator

import pytest

from tokmesh.storage import cipher as cipher_mod
from tokmesh.storage.cipher import (
    NONCE_BYTES,
    NONCE_COUNTER_BYTES,
    NONCE_PREFIX_BYTES,
    Cipher,
)


def _nonce(blob: bytes) -> bytes:
    return blob[:NONCE_BYTES]


def _split(nonce: bytes) -> tuple[bytes, int]:
    return nonce[:NONCE_PREFIX_BYTES], int.from_bytes(nonce[NONCE_PREFIX_BYTES:], "big")


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads as often as it can, to provoke races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_layout_is_prefix_then_big_endian_counter(cipher: Cipher) -> None:
    assert NONCE_PREFIX_BYTES + NONCE_COUNTER_BYTES == NONCE_BYTES == 12
    blobs = [cipher.encrypt(b"state %d" % i) for i in range(50)]
    parts = [_split(_nonce(b)) for b in blobs]
    prefixes = {p for p, _ in parts}
    # 50 nonces could only straddle one redraw, and only at the real 2^32 limit.
    assert len(prefixes) == 1
    counters = [c for _, c in parts]
    assert counters == list(range(counters[0], counters[0] + 50))
    # The blob format and decryption are unchanged.
    for i, blob in enumerate(blobs):
        assert cipher.decrypt(blob, cipher.alg) == b"state %d" % i


def test_nonces_unique_over_many_encryptions_and_ciphers(key: bytes) -> None:
    # Several Cipher objects, even under the same key, share the process's nonce source.
    ciphers = [Cipher(key, alg) for alg in cipher_mod.ALGORITHMS for _ in range(2)]
    nonces = [_nonce(ciphers[i % len(ciphers)].encrypt(b"x")) for i in range(100_000)]
    assert len(set(nonces)) == len(nonces)


def test_nonces_unique_across_threads_with_redraws(
    aes: Cipher, monkeypatch: pytest.MonkeyPatch, fast_switching: None
) -> None:
    """Threads racing each other, and the prefix redraw, never hand out a nonce twice."""
    monkeypatch.setattr(cipher_mod, "NONCE_COUNTER_LIMIT", 500)
    per_thread, n_threads = 5_000, 8
    results: list[list[bytes]] = [[] for _ in range(n_threads)]
    start = threading.Barrier(n_threads)

    def work(out: list[bytes]) -> None:
        start.wait()
        for _ in range(per_thread):
            out.append(_nonce(aes.encrypt(b"x")))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    nonces = [n for out in results for n in out]
    assert len(nonces) == per_thread * n_threads
    assert len(set(nonces)) == len(nonces)
    assert all(_split(n)[1] < 500 for n in nonces)
    # 40,000 nonces at 500 per prefix: at least 80 prefixes, none of them reused.
    assert len({_split(n)[0] for n in nonces}) >= 80


def test_prefix_redrawn_before_the_counter_wraps(
    aes: Cipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cipher_mod, "NONCE_COUNTER_LIMIT", 4)
    blobs = [aes.encrypt(b"wrap %d" % i) for i in range(14)]
    parts = [_split(_nonce(b)) for b in blobs]
    runs: list[tuple[bytes, list[int]]] = []
    for prefix, counter in parts:
        if runs and runs[-1][0] == prefix:
            runs[-1][1].append(counter)
        else:
            runs.append((prefix, [counter]))
    # A prefix is never used again once left, and every run counts up from 0 (the first
    # may have started earlier, under the real limit) without reaching the limit.
    assert len({p for p, _ in runs}) == len(runs) >= 4
    for i, (_, counters) in enumerate(runs):
        assert all(c < 4 for c in counters)
        assert counters == list(range(counters[0], counters[0] + len(counters)))
        if i > 0:
            assert counters[0] == 0
        if 0 < i < len(runs) - 1:
            assert len(counters) == 4
    for i, blob in enumerate(blobs):
        assert aes.decrypt(blob, aes.alg) == b"wrap %d" % i


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_draws_its_own_prefix(aes: Cipher) -> None:
    """Without the at-fork hook the child would go on with the parent's prefix and counter,
    and both would make the same nonces."""
    count = 2_000
    before = _nonce(aes.encrypt(b"parent"))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            nonces = b"".join(_nonce(aes.encrypt(b"child")) for _ in range(count))
            with os.fdopen(write_fd, "wb") as out:
                out.write(nonces)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    parent = [_nonce(aes.encrypt(b"parent")) for _ in range(count)]
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = [data[i : i + NONCE_BYTES] for i in range(0, len(data), NONCE_BYTES)]
    assert len(child) == count
    assert len(set(child)) == count
    assert not set(child) & {before, *parent}
    child_prefixes = {_split(n)[0] for n in child}
    assert len(child_prefixes) == 1
    assert child_prefixes.isdisjoint({_split(n)[0] for n in (before, *parent)})
    # A fresh prefix starts counting at 0.
    assert [_split(n)[1] for n in child] == list(range(count))
