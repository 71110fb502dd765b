"""Opaque session tokens (``tmtk_``) and their SHA-256 hashes (``tmth_``), 01 §1.

In memory the token hash is kept as the raw 32-byte digest (compact, fast dict key); the
``tmth_`` hex form exists only on the wire to internal tooling and inside encrypted records.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

TOKEN_PREFIX = "tmtk_"
TOKEN_HASH_PREFIX = "tmth_"
TOKEN_LENGTH = 48
TOKEN_HASH_LENGTH = 69

_TOKEN_RE = re.compile(r"tmtk_[A-Za-z0-9_-]{43}")
_HASH_RE = re.compile(r"tmth_[0-9a-f]{64}")
_sha256 = hashlib.sha256


def generate_token(shard: int | None = None) -> str:
    """A new token: ``tmtk_`` + Base64 RawURL of 32 CSPRNG bytes (48 chars).

    With ``shard`` (a cluster node issuing it), the first byte is the shard of the
    session and the other 31 are random (248 bits, still far beyond guessing): any node
    can then send the token's validation straight to the owner, see :func:`token_shard`.
    """
    raw = os.urandom(32) if shard is None else bytes((shard,)) + os.urandom(31)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_B64URL = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}


def token_shard(token: str) -> int:
    """The first byte of a well-formed token's 32 bytes (its first two characters).

    For a token a cluster node issued, the shard of its session; for a token the client
    chose, a shard like any other, whose owner knows where the session really is. Call it
    on a token that passed :func:`is_valid_token` only.
    """
    return (_B64URL[token[5]] << 2) | (_B64URL[token[6]] >> 4)


def is_valid_token(token: str) -> bool:
    """Strict format check of 01 §1: 48 chars, ``tmtk_`` prefix, body decodes to 32 bytes."""
    if len(token) != TOKEN_LENGTH or not _TOKEN_RE.fullmatch(token):
        return False
    # 43 base64url chars carry 258 bits; the last char's low 2 bits must be zero for the
    # body to be the canonical encoding of exactly 32 bytes.
    return token[-1] in "AEIMQUYcgkosw048"


def token_digest(token: str) -> bytes:
    """Raw SHA-256 of the full token string (prefix included): the in-memory index key."""
    return _sha256(token.encode("ascii")).digest()


def digest_to_hash(digest: bytes) -> str:
    """``tmth_`` + lowercase hex of a raw digest."""
    return TOKEN_HASH_PREFIX + digest.hex()


def token_hash(token: str) -> str:
    """``tmth_`` + sha256(token).hexdigest() (69 chars, lowercase)."""
    return TOKEN_HASH_PREFIX + _sha256(token.encode("ascii")).hexdigest()


def parse_token_hash(value: str) -> bytes | None:
    """Normalise a ``tmth_`` hash (any case) to its raw digest; ``None`` if malformed."""
    if len(value) != TOKEN_HASH_LENGTH:
        return None
    low = value.lower()
    if not _HASH_RE.fullmatch(low):
        return None
    return bytes.fromhex(low[5:])
