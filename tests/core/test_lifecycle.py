"""01 §15.1 and §15.2 acceptance checks at the service layer (real engine, real WAL)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from tokmesh.actors.engine import StorageEngine
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_key_id, new_session_id
from tokmesh.domain.tokens import generate_token, is_valid_token, token_hash
from tokmesh.services.sessions import (
    ListQuery,
    RequestContext,
    SessionService,
    SessionSettings,
    local_sessions,
)

from .conftest import CTX, EngineRunner, wal_bytes

CTX_B = RequestContext(key_id=CTX.key_id, role="issuer", client_ip="10.0.0.2", user_agent="UA-B")


def svc(engine: StorageEngine) -> SessionService:
    return local_sessions(engine)


async def expect(code: object, coro: object) -> TokMeshError:
    with pytest.raises(TokMeshError) as info:
        if hasattr(coro, "__await__"):
            await coro  # type: ignore[misc]
        else:
            coro()  # type: ignore[operator]
    assert info.value.error is code, info.value.code
    return info.value


# -- 15.1 ids, tokens, entity ----------------------------------------------------------------


def test_ids_format_and_monotonic() -> None:
    ids = [new_session_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"tmss-[0-9a-hjkmnp-tv-z]{26}", i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert re.fullmatch(r"tmak-[0-9a-hjkmnp-tv-z]{26}", new_key_id())


def test_tokens_format_distinct_and_hash() -> None:
    tokens = {generate_token() for _ in range(1_000_000)}
    assert len(tokens) == 1_000_000
    t = next(iter(tokens))
    assert re.fullmatch(r"tmtk_[A-Za-z0-9_-]{43}", t) and is_valid_token(t)
    import base64
    import hashlib

    assert len(base64.urlsafe_b64decode(t[5:] + "=")) == 32
    h = token_hash(t)
    assert h == "tmth_" + hashlib.sha256(t.encode()).hexdigest() and len(h) == 69


async def test_fresh_session_fields(engine: StorageEngine) -> None:
    res = await svc(engine).create(CTX, "U1")
    pub = res.session.to_public()
    rec = res.session.to_record()
    assert len(rec) == 17
    assert pub["version"] == 1 and pub["created_at"] == pub["last_active"]
    assert pub["last_access_ip"] == pub["ip_address"] == "10.0.0.1"
    assert pub["created_by"] == CTX.key_id and pub["data"] == {}
    assert "token_hash" not in pub


async def test_get_uppercase_id(engine: StorageEngine) -> None:
    res = await svc(engine).create(CTX, "U1")
    upper = "TMSS-" + res.session.id[5:].upper()
    assert svc(engine).get(upper).id == res.session.id


async def test_limits(engine: StorageEngine) -> None:
    s = svc(engine)
    await expect(E.SESS_INVALID, s.create(CTX, "U1", data={"k": "v" * 4095, "x": "y" * 0}))
    ok = await s.create(
        CTX,
        "U1",
        data={
            "k": "v" * 1023,
            "k2": "v" * 1023,
            "k3": "v" * 1023,
            "k4": "v" * (4096 - 3 * 1025 - 2 - 2),
        },
    )
    assert ok.session.data is not None
    await expect(E.SESS_INVALID, s.create(CTX, "U1", data={"k" * 65: "v"}))
    await expect(E.SESS_INVALID, s.create(CTX, "U1", data={"k": "v" * 1025}))
    await expect(E.SESS_INVALID, s.create(CTX, "u" * 129))
    await expect(E.ARG_MISSING, s.create(CTX, None))
    long_ua = RequestContext(key_id=CTX.key_id, client_ip="1.1.1.1", user_agent="a" * 600)
    r = await s.create(long_ua, "U1")
    assert len(r.session.user_agent.encode()) == 512


async def test_data_exactly_4096_and_4097(engine: StorageEngine) -> None:
    s = svc(engine)
    # four entries of 1 + 1023 bytes = 4096 exactly
    data = {f"{i}": "v" * 1023 for i in range(4)}
    assert sum(len(k) + len(v) for k, v in data.items()) == 4096
    await s.create(CTX, "U1", data=data)
    data["4"] = ""
    data["0"] = "v" * 1023
    data = {f"{i}": "v" * 1023 for i in range(3)} | {"3": "v" * 1024}
    assert sum(len(k) + len(v) for k, v in data.items()) == 4097
    await expect(E.SESS_INVALID, s.create(CTX, "U1", data=data))


async def test_quota(engine: StorageEngine, clock: ManualClock) -> None:
    s = svc(engine)
    first = None
    for _ in range(50):
        r = await s.create(CTX, "U1")
        first = first or r
    err = await expect(E.SESS_QUOTA, s.create(CTX, "U1"))
    assert err.http_status == 429
    assert first is not None
    await s.revoke(CTX, first.session.id)
    await s.create(CTX, "U1")
    # expired-unswept sessions do not count
    for _ in range(50):
        await s.create(CTX, "U2", ttl_seconds=1)
    clock.advance(1500)
    await s.create(CTX, "U2")


async def test_quota_evict_oldest(runner: EngineRunner) -> None:
    engine = await runner.start(
        sessions=SessionSettings(max_per_user=3, quota_policy="evict_oldest")
    )
    s = svc(engine)
    made = [await s.create(CTX, "U1") for _ in range(3)]
    await s.create(CTX, "U1")
    await expect(E.SESS_NOT_FOUND, lambda: s.get(made[0].session.id))
    await expect(E.TOKN_REVOKED, lambda: s.validate(made[0].token))
    assert len(s.list_sessions(ListQuery(user_id="U1")).items) == 3


async def test_concurrent_creates_one_token(engine: StorageEngine) -> None:
    s = svc(engine)
    token = generate_token()
    results: list[str] = []

    async def one(i: int) -> None:
        try:
            await s.create(CTX, f"user-{i}", token=token)
            results.append("ok")
        except TokMeshError as err:
            results.append(err.code)

    async with trio.open_nursery() as n:
        for i in range(100):
            n.start_soon(one, i)
    assert results.count("ok") == 1
    assert results.count("TM-TOKN-4090") == 99


async def test_token_echo_and_malformed(engine: StorageEngine) -> None:
    s = svc(engine)
    token = generate_token()
    r = await s.create(CTX, "U1", token=token)
    assert r.token == token
    r2 = await s.create(CTX, "U1")
    assert is_valid_token(r2.token) and r2.token != token
    await expect(E.TOKN_MALFORMED, s.create(CTX, "U1", token=token[:47]))
    await expect(E.TOKN_MALFORMED, s.create(CTX, "U1", token=token[:20] + "+" + token[21:]))


async def test_default_and_max_ttl(engine: StorageEngine) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1")
    assert r.session.expires_at - r.session.created_at == 7_200_000
    await expect(E.SESS_INVALID, s.create(CTX, "U1", ttl_seconds=2_592_001))
    await expect(E.ARG_INVALID, s.create(CTX, "U1", ttl_seconds=-1))


# -- 15.2 lifecycle ------------------------------------------------------------------------------


async def test_validate_states(engine: StorageEngine, clock: ManualClock) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1")
    assert s.validate(r.token).id == r.session.id
    await expect(E.TOKN_INVALID, lambda: s.validate(generate_token()))
    short = await s.create(CTX, "U1", ttl_seconds=1)
    clock.advance(1500)
    await expect(E.TOKN_EXPIRED, lambda: s.validate(short.token))
    await s.revoke(CTX, r.session.id)
    await expect(E.TOKN_REVOKED, lambda: s.validate(r.token))
    await expect(E.ARG_MISSING, lambda: s.validate(""))
    await expect(E.TOKN_MALFORMED, lambda: s.validate("tmtk_short"))


async def test_validate_touch_updates_access_fields(
    engine: StorageEngine, clock: ManualClock
) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1")
    clock.advance(1000)
    touched = await s.validate_touch(CTX_B, r.token)
    assert touched.last_active == r.session.last_active + 1000
    assert touched.last_access_ip == "10.0.0.2" and touched.last_access_ua == "UA-B"
    assert touched.ip_address == "10.0.0.1" and touched.user_agent == "UA-A"
    assert touched.version == 2
    assert s.get(r.session.id).version == 2


async def test_get_is_pure(engine: StorageEngine, tmp_path: Path, clock: ManualClock) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1")
    size = wal_bytes(tmp_path)
    clock.advance(5000)
    a = s.get(r.session.id)
    b = s.get(r.session.id)
    assert a.last_active == b.last_active == r.session.last_active
    assert a.version == b.version == 1
    assert wal_bytes(tmp_path) == size


async def test_touch_monotonic_with_clock_going_back(
    engine: StorageEngine, clock: ManualClock
) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1")
    highest = r.session.last_active
    for i in range(100):
        clock.advance(700 if i % 2 == 0 else -1000)
        t = await s.touch(CTX, r.session.id)
        assert t.last_active >= highest
        highest = t.last_active
        assert t.expires_at == r.session.expires_at


async def test_renew(engine: StorageEngine, clock: ManualClock) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1", ttl_seconds=200)
    clock.advance(100_000)
    renewed = await s.renew(CTX_B, r.session.id, 300)
    assert renewed.expires_at == clock.now_ms() + 300_000
    assert renewed.version == 2
    assert renewed.ip_address == renewed.last_access_ip == "10.0.0.1"
    clock.advance(301_000)
    await expect(E.SESS_EXPIRED, s.renew(CTX, r.session.id, 300))
    await expect(E.SESS_NOT_FOUND, s.renew(CTX, new_session_id(), 300))
    await expect(E.ARG_MISSING, s.renew(CTX, r.session.id, None))


async def test_stale_version_conflict(engine: StorageEngine, tmp_path: Path) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1")
    await s.renew(CTX, r.session.id, 60, expected_version=1)
    size = wal_bytes(tmp_path)
    err = await expect(E.SESS_CONFLICT, s.renew(CTX, r.session.id, 60, expected_version=1))
    assert err.http_status == 409 and err.headers == {"Retry-After": "1"}
    assert err.details == {"current_version": 2, "attempted_version": 1}
    await expect(E.SESS_CONFLICT, s.update(CTX, r.session.id, data={}, expected_version=1))
    assert s.get(r.session.id).version == 2
    assert wal_bytes(tmp_path) == size


async def test_concurrent_renews_all_succeed(engine: StorageEngine) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1")
    ok = 0

    async def one() -> None:
        nonlocal ok
        await s.renew(CTX, r.session.id, 600)
        ok += 1

    async with trio.open_nursery() as n:
        for _ in range(100):
            n.start_soon(one)
    assert ok == 100
    assert s.get(r.session.id).version == 101


async def test_revoke_idempotent(engine: StorageEngine) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1")
    assert await s.revoke(CTX, r.session.id) is True
    assert await s.revoke(CTX, r.session.id) is False
    assert await s.revoke(CTX, new_session_id()) is False
    await expect(E.SESS_NOT_FOUND, lambda: s.get(r.session.id))
    await expect(E.TOKN_REVOKED, lambda: s.validate(r.token))
    assert s.list_sessions(ListQuery(user_id="U1")).total == 0


async def test_revoke_by_user(runner: EngineRunner) -> None:
    engine = await runner.start(sessions=SessionSettings(max_per_user=2000))
    s = svc(engine)
    keep = None
    for _ in range(5):
        keep = await s.create(CTX, "U1")
    assert await s.revoke_user(CTX, "U1") == 5
    assert s.list_sessions(ListQuery(user_id="U1")).items == []
    for _ in range(1001):
        await s.create(CTX, "U2")
    await expect(E.SESS_QUOTA, s.revoke_user(CTX, "U2"))
    assert s.list_sessions(ListQuery(user_id="U2")).total == 1001
    # revoke all but one
    assert keep is not None
    mine = [await s.create(CTX, "U3") for _ in range(3)]
    assert await s.revoke_user(CTX, "U3", except_session_id=mine[1].session.id) == 2
    assert s.get(mine[1].session.id).id == mine[1].session.id


async def test_update_rules(engine: StorageEngine) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1", device_id="d1", data={"a": "1"})
    await expect(E.ARG_INVALID, s.update(CTX, r.session.id, user_id="U2"))
    u = await s.update(CTX, r.session.id, device_id="d2", data={"b": "2"}, ttl_seconds=60)
    assert u.device_id == "d2" and u.data == {"b": "2"} and u.version == 2
    assert s.list_sessions(ListQuery(device_id="d2")).total == 1
    assert s.list_sessions(ListQuery(device_id="d1")).total == 0


async def test_list_paging_filters_sort(engine: StorageEngine, clock: ManualClock) -> None:
    s = svc(engine)
    ids = []
    for _ in range(25):
        clock.advance(10)
        ids.append((await s.create(CTX, "U1")).session.id)
    page = s.list_sessions(ListQuery(user_id="U1"))
    assert page.page == 1 and page.size == 20 and len(page.items) == 20 and page.total == 25
    await expect(E.ARG_INVALID, lambda: s.list_sessions(ListQuery(size=10_000)))
    t1 = clock.now_ms()
    clock.advance(10)
    await s.touch(CTX, ids[3])
    res = s.list_sessions(ListQuery(user_id="U1", active_after=t1 + 1))
    assert [x.id for x in res.items] == [ids[3]]
    res = s.list_sessions(ListQuery(user_id="U1", sort_by="last_active", sort_order="desc"))
    actives = [x.last_active for x in res.items]
    assert actives == sorted(actives, reverse=True)
    assert s.list_sessions(ListQuery(user_id="U1", page=3)).items == []


async def test_sweeper_purges_with_wal_delete(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    s = svc(engine)
    for i in range(10_000):
        await s.create(CTX, f"user-{i % 200}", ttl_seconds=1)
    assert len(engine.state.sessions) == 10_000
    before = wal_bytes(tmp_path)
    clock.advance(2000)
    assert engine.sweeper is not None
    with trio.fail_after(20):
        while engine.state.sessions:
            await trio.sleep(0.05)
    assert len(engine.state.by_user) == 0 and engine.state.by_user.count() == 0
    assert engine.state.by_token == {}
    # each purge is a WAL DELETE record
    assert wal_bytes(tmp_path) > before + 10_000 * 9


async def test_gc_trigger_and_tombstone_expiry(engine: StorageEngine, clock: ManualClock) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1", ttl_seconds=5)
    await s.revoke(CTX, r.session.id)
    await expect(E.TOKN_REVOKED, lambda: s.validate(r.token))
    clock.advance(6000)
    await s.gc()
    await expect(E.TOKN_INVALID, lambda: s.validate(r.token))


async def test_idle_timeout(engine: StorageEngine, clock: ManualClock) -> None:
    s = svc(engine)
    r = await s.create(CTX, "U1", idle_timeout_seconds=10)
    clock.advance(8000)
    await s.validate_touch(CTX, r.token)
    clock.advance(8000)
    assert s.validate(r.token).id == r.session.id
    clock.advance(3000)
    await expect(E.TOKN_EXPIRED, lambda: s.validate(r.token))


async def test_expired_codes_survive_the_purge(engine: StorageEngine, clock: ManualClock) -> None:
    """After the sweeper purged an expired session, reads still say "expired"."""
    s = svc(engine)
    r = await s.create(CTX, "U1", ttl_seconds=1)
    clock.advance(1500)
    with trio.fail_after(10):
        while r.session.id in engine.state.sessions:
            await trio.sleep(0.02)
    await expect(E.SESS_EXPIRED, lambda: s.get(r.session.id))
    await expect(E.TOKN_EXPIRED, lambda: s.validate(r.token))
    await expect(E.SESS_EXPIRED, s.renew(CTX, r.session.id, 60))
    await expect(E.SESS_EXPIRED, s.touch(CTX, r.session.id))
    # a revoked session's token turns "invalid" (not "expired") once its tombstone ends
    v = await s.create(CTX, "U2", ttl_seconds=1)
    await s.revoke(CTX, v.session.id)
    clock.advance(1500)
    with trio.fail_after(10):
        while v.session.id in engine.state.sessions:
            await trio.sleep(0.02)
    await expect(E.TOKN_INVALID, lambda: s.validate(v.token))


async def test_full_collections_are_made_rare(engine: StorageEngine) -> None:
    """A running engine asks CPython for a full GC collection only every
    FULL_COLLECTION_EVERY middle-generation ones: with its records frozen, the default
    (10) ran one 2-3 times a second under writes, each stopping the loop for up to 33 ms."""
    import gc

    from tokmesh.actors.engine import FULL_COLLECTION_EVERY

    assert gc.get_threshold()[2] == FULL_COLLECTION_EVERY > 10


async def test_the_collector_setting_comes_back_when_the_engine_stops(
    runner: EngineRunner,
) -> None:
    import gc
    import sys

    from tokmesh.actors.engine import FULL_COLLECTION_EVERY, GIL_SWITCH_INTERVAL

    outer = gc.get_threshold()
    outer_switch = sys.getswitchinterval()
    mine = (700, 10, 10)  # whatever earlier tests left, the process's own setting here
    gc.set_threshold(*mine)
    sys.setswitchinterval(0.005)
    try:
        await runner.start()
        assert gc.get_threshold()[2] == FULL_COLLECTION_EVERY
        # Threads get the GIL back from the busy loop within 1 ms (sync-mode commits).
        assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL < 0.005
        await runner.stop()
        assert gc.get_threshold() == mine
        assert sys.getswitchinterval() == 0.005
    finally:
        gc.set_threshold(*outer)
        sys.setswitchinterval(outer_switch)
