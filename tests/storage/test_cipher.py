"""Cipher, algorithm selection and the key file (01 §11, 02 §15)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tokmesh.domain.errors import E
from tokmesh.storage.cipher import (
    ALG_AES,
    ALG_CHACHA,
    KEY_FILE_NAME,
    OVERHEAD,
    Cipher,
    DecryptError,
    StorageFatalError,
    load_or_create_key,
    select_algorithm,
)

X86_AES = "processor\t: 0\nflags\t\t: fpu vme sse2 aes pclmulqdq avx2\n"
X86_NO_CLMUL = "processor\t: 0\nflags\t\t: fpu vme sse2 aes avx2\n"
ARM_AES = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"
ARM_NO_PMULL = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha1\n"


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "expected"),
    [
        (X86_AES, "x86_64", ALG_AES),
        (X86_NO_CLMUL, "x86_64", ALG_CHACHA),
        (ARM_AES, "aarch64", ALG_AES),
        (ARM_NO_PMULL, "aarch64", ALG_CHACHA),
        (ARM_AES, "riscv64", ALG_CHACHA),
        ("", "x86_64", ALG_CHACHA),
    ],
)
def test_select_algorithm_from_cpu_flags(cpuinfo: str, machine: str, expected: str) -> None:
    assert select_algorithm(cpuinfo, machine) == expected


def test_select_algorithm_on_this_machine_is_known() -> None:
    assert select_algorithm() in (ALG_AES, ALG_CHACHA)


def test_round_trip_with_fresh_nonces(cipher: Cipher) -> None:
    plaintext = b'{"user_id":"alice"}'
    a = cipher.encrypt(plaintext)
    b = cipher.encrypt(plaintext)
    assert len(a) == len(plaintext) + OVERHEAD
    assert a[:12] != b[:12]  # fresh random nonce per call
    assert a != b
    assert cipher.decrypt(a, cipher.alg) == plaintext
    assert plaintext not in a


def test_decrypt_follows_recorded_algorithm(key: bytes) -> None:
    aes_blob = Cipher(key, ALG_AES).encrypt(b"state")
    chacha_pref = Cipher(key, ALG_CHACHA)
    assert chacha_pref.decrypt(aes_blob, ALG_AES) == b"state"
    with pytest.raises(DecryptError):
        chacha_pref.decrypt(aes_blob, ALG_CHACHA)


def test_wrong_key_and_tampering_fail(cipher: Cipher) -> None:
    blob = cipher.encrypt(b"state")
    other = Cipher(os.urandom(32), cipher.alg)
    with pytest.raises(DecryptError):
        other.decrypt(blob, cipher.alg)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(DecryptError):
            cipher.decrypt(bytes(bad), cipher.alg)
    with pytest.raises(DecryptError):
        cipher.decrypt(blob[:20], cipher.alg)
    with pytest.raises(DecryptError):
        cipher.decrypt(blob, "rot13")


def test_cipher_rejects_bad_key_and_alg() -> None:
    with pytest.raises(ValueError):
        Cipher(b"short")
    with pytest.raises(ValueError):
        Cipher(os.urandom(32), "des")


def test_configured_key_hex() -> None:
    raw = os.urandom(32)
    assert load_or_create_key(Path("/nonexistent-never-touched"), raw.hex()) == raw
    assert load_or_create_key(Path("/nonexistent-never-touched"), raw.hex().upper()) == raw


@pytest.mark.parametrize("value", ["ab" * 31 + "a", "zz" * 32, "ab" * 33])
def test_configured_key_must_be_64_hex(value: str) -> None:
    with pytest.raises(ValueError) as info:
        load_or_create_key(Path("/nonexistent-never-touched"), value)
    assert value not in str(info.value)  # the key is a secret


def test_generated_key_file_is_0600_and_reused(tmp_path: Path) -> None:
    wal_dir = tmp_path / "data" / "wal"
    key1 = load_or_create_key(wal_dir, "")
    path = wal_dir / KEY_FILE_NAME
    assert len(key1) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(wal_dir.stat().st_mode) == 0o750
    text = path.read_text()
    assert text.strip() == key1.hex() and len(text.strip()) == 64
    assert load_or_create_key(wal_dir, "") == key1
    assert [p.name for p in wal_dir.iterdir()] == [KEY_FILE_NAME]  # no temp files left


def test_loose_key_file_mode_is_tightened(tmp_path: Path) -> None:
    raw = os.urandom(32)
    path = tmp_path / KEY_FILE_NAME
    path.write_text(raw.hex())
    path.chmod(0o644)
    assert load_or_create_key(tmp_path, "") == raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_key_file_is_fatal(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).write_text("not-a-key")
    with pytest.raises(StorageFatalError) as info:
        load_or_create_key(tmp_path, "")
    assert info.value.error is E.SYS_STORAGE
    assert info.value.code == "TM-SYS-5001"
