"""Synthetic session records for the storage benchmarks (shaped like ``core_bench scale``)
and bulk session creation over RESP for the network benchmarks."""

from __future__ import annotations

from typing import Any

import orjson

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


def resp_client(port: int, key: str) -> Any:
    """redis-py as its users construct it (defaults), bound to the API key ``key_id:secret``."""
    import redis

    key_id, secret = key.split(":", 1)
    return redis.Redis(host="127.0.0.1", port=port, username=key_id, password=secret)


def create_sessions_resp(client: Any, n: int, pipeline: int = 1000) -> list[tuple[str, str]]:
    """``n`` sessions of distinct users made with ``TM.CREATE`` pipelines: (id, token) pairs."""
    made: list[tuple[str, str]] = []
    for start in range(0, n, pipeline):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + pipeline, n)):
            pipe.execute_command("TM.CREATE", new_session_id(), orjson.dumps({"user_id": f"u{i}"}))
        for reply in pipe.execute():
            body = orjson.loads(reply)
            made.append((body["session_id"], body["token"]))
    return made


def create_token_sessions_resp(client: Any, tokens: list[str], pipeline: int = 1000) -> None:
    """One session per given token (``SET id {user_id, token}``), in pipelines."""
    for start in range(0, len(tokens), pipeline):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + pipeline, len(tokens))):
            body = orjson.dumps({"user_id": f"d{i}", "token": tokens[i]})
            pipe.execute_command("SET", new_session_id(), body)
        for reply in pipe.execute():
            if reply is not True and reply != b"OK":
                raise RuntimeError(f"SET answered {reply!r}")
