"""Fixtures for the auth tests: an in-memory key repository (test fixture only), a spying
argon2 hasher (real Argon2id, counted), and a factory wiring the real auth components."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
from argon2 import PasswordHasher, Type

from tokmesh.actors.auth_cache import AuthCache
from tokmesh.domain.apikey import ApiKey
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.services.auth import Authenticator, AuthSettings
from tokmesh.services.keys import KeyService

T0 = 1_700_000_000_000
PEER = "203.0.113.7"
IP_DOC = "198.51.100.10"

#: Low-cost Argon2 for fast tests (the default parameters are checked separately).
FAST = {"argon2_memory_kib": 8192, "argon2_iterations": 1, "argon2_parallelism": 1}


class MemoryKeyRepository:
    """A dict-backed KeyRepository. ``put_key`` yields to the scheduler like a WAL write."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.fail_writes = False
        self.writes = 0

    def get_key(self, key_id: str) -> ApiKey | None:
        return self.keys.get(key_id)

    def list_keys(self) -> list[ApiKey]:
        return list(self.keys.values())

    async def put_key(self, key: ApiKey) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail_writes:
            raise TokMeshError(E.SYS_STORAGE, "simulated write failure")
        self.keys[key.key_id] = key
        self.writes += 1


class SpyHasher(PasswordHasher):
    """argon2-cffi's real hasher, counting verify calls, their threads and concurrency."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock = threading.Lock()
        self.verify_calls = 0
        self.hash_calls = 0
        #: the PHC string of every verify, in call order
        self.verified: list[str] = []
        self.threads: set[int] = set()
        self.active = 0
        self.max_active = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        with self.lock:
            self.verify_calls += 1
            self.verified.append(hash if isinstance(hash, str) else hash.decode())
            self.threads.add(threading.get_ident())
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return super().verify(hash, password)
        finally:
            with self.lock:
                self.active -= 1

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self.lock:
            self.hash_calls += 1
            self.threads.add(threading.get_ident())
        return super().hash(password, salt=salt)


@attrs.define
class Env:
    clock: ManualClock
    settings: AuthSettings
    repo: MemoryKeyRepository
    spy: SpyHasher
    cache: AuthCache
    keys: KeyService
    auth: Authenticator
    audits: list[tuple[str, dict[str, Any]]]

    def actions(self, name: str) -> list[dict[str, Any]]:
        return [fields for action, fields in self.audits if action == name]


MakeEnv = Callable[..., Awaitable[Env]]


@pytest.fixture
def make_env(nursery: trio.Nursery) -> MakeEnv:
    """``await make_env(**AuthSettings overrides)`` -> a wired, running Env."""

    async def factory(**overrides: Any) -> Env:
        concurrency = overrides.pop("concurrency", 2)
        params = {**FAST, **overrides}
        settings = AuthSettings(**params)
        clock = ManualClock(T0)
        repo = MemoryKeyRepository()
        spy = SpyHasher(
            time_cost=settings.argon2_iterations,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        cache = AuthCache(
            clock=clock,
            capacity=settings.cache_capacity,
            ttl_ms=settings.cache_ttl_ms,
            argon2=settings.argon2_params(),
            concurrency=concurrency,
            password_hasher=spy,
        )
        await nursery.start(cache.run)
        keys = KeyService(repo, settings.key_settings(), clock, cache, cache.invalidate)
        audits: list[tuple[str, dict[str, Any]]] = []

        def audit(action: str, **fields: Any) -> None:
            audits.append((action, fields))

        auth = Authenticator(settings, repo, cache, clock, audit=audit, on_used=keys.note_used)
        return Env(clock, settings, repo, spy, cache, keys, auth, audits)

    return factory


@pytest.fixture
async def env(make_env: MakeEnv) -> Env:
    return await make_env()
