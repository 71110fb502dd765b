"""The interface the Authenticator and the KeyService need from the validation cache.

The cache actor (``tokmesh.actors.auth_cache``) implements :class:`CredentialCache`; the
services depend only on this protocol. What it stores is a
:class:`~tokmesh.domain.grants.Grant`.
"""

from __future__ import annotations

from typing import Protocol

from tokmesh.domain.apikey import ApiKey
from tokmesh.domain.grants import Grant


class CredentialCache(Protocol):
    """The validation cache + Argon2 executor, as seen by the Authenticator and KeyService."""

    def lookup(self, digest: bytes, now_ms: int) -> Grant | None:
        """Synchronous hit path: a live grant or ``None`` (no ``await``, no Argon2)."""
        ...

    def generation(self, key_id: str) -> int:
        """Invalidation counter of ``key_id``; a verify started under an older one is not cached."""
        ...

    def invalidate(self, key_id: str) -> int:
        """Drop every grant of ``key_id`` at once; returns how many were dropped."""
        ...

    async def verify(
        self, key: ApiKey, secret: str, digest: bytes, generation: int
    ) -> Grant | None:
        """Argon2id verify off the event loop; cache and return the grant on success."""
        ...

    async def hash_secret(self, secret: str) -> str:
        """Argon2id PHC string for a new secret, computed off the event loop."""
        ...
