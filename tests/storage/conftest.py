"""Shared fixtures of the storage tests: a fixed-key cipher and a session factory."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from tokmesh.domain.ids import new_key_id, new_session_id
from tokmesh.domain.session import Session
from tokmesh.domain.tokens import generate_token, token_digest
from tokmesh.storage.cipher import ALG_AES, ALG_CHACHA, Cipher

#: "now" of every test (2025-01-01T00:00:00Z); sessions expire an hour later.
NOW_MS = 1_735_689_600_000
HOUR_MS = 3_600_000

MakeSession = Callable[..., Session]


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture(params=[ALG_AES, ALG_CHACHA])
def cipher(request: pytest.FixtureRequest, key: bytes) -> Cipher:
    return Cipher(key, request.param)


@pytest.fixture
def aes(key: bytes) -> Cipher:
    return Cipher(key, ALG_AES)


def _make_session(**overrides: Any) -> Session:
    fields: dict[str, Any] = {
        "id": new_session_id(),
        "user_id": "alice@example.com",
        "token_hash": token_digest(generate_token()),
        "ip_address": "10.1.2.3",
        "user_agent": "Mozilla/5.0 test-agent",
        "last_access_ip": "10.1.2.3",
        "last_access_ua": "Mozilla/5.0 test-agent",
        "device_id": "device-7",
        "created_by": new_key_id(),
        "created_at": NOW_MS,
        "expires_at": NOW_MS + HOUR_MS,
        "last_active": NOW_MS,
        "data": {"role": "secret-data-value"},
        "version": 1,
        "ttl": HOUR_MS,
    }
    fields.update(overrides)
    return Session(**fields)


@pytest.fixture
def make_session() -> MakeSession:
    return _make_session
