"""Argon2id hashing and verification of API key secrets (02 §7, §12.2).

These functions block for ~50-100 ms at the default cost. They are only ever called from a
worker thread (``trio.to_thread.run_sync`` behind the auth-cache actor's
``CapacityLimiter``), never on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

log = logging.getLogger("tokmesh.auth")

HASH_LEN = 32
SALT_LEN = 16


@attrs.frozen(slots=True)
class Argon2Params:
    """Cost parameters for new hashes (``security.auth.argon2.*``; memory in KiB)."""

    memory_kib: int = 16384
    iterations: int = 2
    parallelism: int = 2


def make_password_hasher(params: Argon2Params) -> PasswordHasher:
    """The argon2-cffi hasher for new secrets: Argon2id v1.3, 32-byte hash, 16-byte salt."""
    return PasswordHasher(
        time_cost=params.iterations,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=HASH_LEN,
        salt_len=SALT_LEN,
        type=Type.ID,
    )


def hash_secret_blocking(hasher: PasswordHasher, secret: str) -> str:
    """PHC string ``$argon2id$v=19$m=…,t=…,p=…$salt$hash`` for ``secret`` (blocking)."""
    return hasher.hash(secret)


def verify_any_blocking(hasher: PasswordHasher, hashes: Sequence[str], secret: str) -> int | None:
    """Index of the first hash that ``secret`` matches, or ``None`` (blocking).

    Every hash is checked, with no early exit, so timing reveals neither which secret
    matched nor that a rotation is pending (02 §12.2). Verification uses the parameters
    stored in each PHC string, so retuning never breaks existing keys.
    """
    matched: int | None = None
    for index, phc in enumerate(hashes):
        try:
            ok: bool = hasher.verify(phc, secret)
        except VerifyMismatchError:
            ok = False
        except (InvalidHashError, VerificationError) as exc:
            # A corrupt stored hash is a mismatch, but an operator must know about it.
            log.error("api key hash could not be verified: %s", type(exc).__name__)
            ok = False
        if ok and matched is None:
            matched = index
    return matched
