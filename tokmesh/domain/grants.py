"""What the API-key validation cache stores: a :class:`Grant` and the rules of its life.

A grant is the metadata snapshot of a key taken when a secret was proven by Argon2id,
never the secret itself. The cache actor (``tokmesh.actors.auth_cache``) makes and keeps
them; the Authenticator (``tokmesh.services.auth``) reads them.
"""

from __future__ import annotations

import hashlib
import hmac

import attrs

from tokmesh.domain.apikey import ApiKey
from tokmesh.domain.ip_rules import Networks, networks_or_deny


def credential_digest(key_id: str, secret: str) -> bytes:
    """Cache key ``SHA-256(key_id ‖ secret)``; key_id is fixed-length, so unambiguous."""
    return hashlib.sha256((key_id + secret).encode("ascii")).digest()


def hash_fingerprint(phc: str) -> bytes:
    """Short stable fingerprint of a stored hash, to tell later which hash a grant matched."""
    return hashlib.sha256(phc.encode("ascii", "replace")).digest()[:16]


@attrs.frozen(slots=True)
class Grant:
    """Snapshot of a key after a successful verification (the cache value)."""

    key_id: str
    role: str
    rate_limit: int
    expires_at: int
    status: str
    #: Parsed per-key allow-list; ``None`` if the stored list is corrupt (deny).
    allowed: Networks | None
    matched_old: bool
    grace_period_end: int
    version: int
    #: Fingerprint of the PHC string that matched (see :func:`hash_fingerprint`).
    fingerprint: bytes = attrs.field(repr=False)
    #: Cache lifetime end (ms, exclusive): ``min(now+ttl, grace end, expires_at+1)``.
    valid_until: int


def make_grant(key: ApiKey, matched_old: bool, now_ms: int, ttl_ms: int) -> Grant:
    """Build the cache entry for ``key`` with the 02 §8 lifetime rule."""
    valid_until = now_ms + ttl_ms
    if matched_old:
        valid_until = min(valid_until, key.grace_period_end)
    if key.expires_at:
        # Valid at expires_at exactly (expired only when now > expires_at).
        valid_until = min(valid_until, key.expires_at + 1)
    phc = key.old_secret_hash if matched_old and key.old_secret_hash else key.secret_hash
    return Grant(
        key_id=key.key_id,
        role=key.role,
        rate_limit=key.rate_limit,
        expires_at=key.expires_at,
        status=key.status,
        allowed=networks_or_deny(key.allowedlist),
        matched_old=matched_old,
        grace_period_end=key.grace_period_end,
        version=key.version,
        fingerprint=hash_fingerprint(phc),
        valid_until=valid_until,
    )


def grant_still_matches(key: ApiKey, fingerprint: bytes, now_ms: int) -> bool:
    """True when the credential behind ``fingerprint`` is still accepted by ``key``.

    Used after a key change: the current hash always works; the previous one only inside
    the rotation grace. Constant-time comparisons (02 §12.2).
    """
    if hmac.compare_digest(fingerprint, hash_fingerprint(key.secret_hash)):
        return True
    return (
        key.old_secret_hash is not None
        and key.in_grace(now_ms)
        and hmac.compare_digest(fingerprint, hash_fingerprint(key.old_secret_hash))
    )
