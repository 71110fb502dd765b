"""Synthetic session records for the storage benchmarks (shaped like ``core_bench scale``)."""

from __future__ import annotations

from tokmesh.domain.ids import new_session_id
from tokmesh.domain.session import Session
from tokmesh.domain.tokens import generate_token, token_digest

KEY_ID = "tmak-01jf8xzm7e3xqh5p8n4r6s2w0t"
DAY_MS = 86_400_000


def synthetic_sessions(n: int, now: int, spacing_ms: int = 0) -> list[Session]:
    """``n`` records of five per user, each with a one-entry ``data`` map and a day's TTL.

    ``spacing_ms`` > 0 spreads creation (and so expiry) times backwards from ``now``, one
    record every ``spacing_ms``, as a real fill would; 0 gives them all ``now``.
    """
    sessions = []
    for i in range(n):
        created = now - spacing_ms * (n - i)
        sessions.append(
            Session(
                id=new_session_id(),
                user_id=f"user-{i // 5}",
                token_hash=token_digest(generate_token()),
                ip_address="10.1.2.3",
                user_agent="bench/1.0",
                last_access_ip="10.1.2.3",
                last_access_ua="bench/1.0",
                created_by=KEY_ID,
                created_at=created,
                expires_at=created + DAY_MS,
                last_active=created,
                data={"role": "member"},
                ttl=DAY_MS,
            )
        )
    return sessions
