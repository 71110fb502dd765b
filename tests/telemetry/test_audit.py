"""Audit log: asynchronous append, daily files, retention, query with filters and paging."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_key_id
from tokmesh.domain.tokens import generate_token, token_hash
from tokmesh.telemetry import metrics
from tokmesh.telemetry.audit import LOCAL_ADMIN, AuditLog, AuditRecord, admin_action

from .test_redact import api_secret

DAY_MS = 86_400_000
# 2024-03-10T12:00:00Z
T0 = 1_710_072_000_000


def day_name(ts_ms: int) -> str:
    return "audit-" + time.strftime("%Y%m%d", time.gmtime(ts_ms // 1000)) + ".jsonl"


def rec(ts: int, action: str = "KEY_CREATED", **fields: Any) -> AuditRecord:
    return AuditRecord.new(action, clock=ManualClock(ts), **fields)


def dropped(reason: str) -> float:
    """Current ``tokmesh_audit_dropped_total{reason=...}``."""
    value = metrics.REGISTRY.get_sample_value("tokmesh_audit_dropped_total", {"reason": reason})
    assert value is not None
    return value


def test_record_fields_and_json_form() -> None:
    kid = new_key_id()
    r = AuditRecord.new(
        "KEY_ROTATED",
        clock=ManualClock(T0),
        operator_id=kid,
        operator_role="admin",
        resource=f"/admin/v1/keys/{kid}/rotate",
        ip_address="192.168.1.5",
        tcp_remote_ip="10.0.0.1",
        user_agent="tokmesh-cli/0.1",
        request_id="req-1",
        details={"key_id": kid},
    )
    assert r.id.startswith("audit-") and len(r.id) == 32
    d = r.to_dict()
    assert list(d) == [
        "id",
        "timestamp",
        "operator_id",
        "operator_role",
        "action",
        "resource",
        "ip_address",
        "tcp_remote_ip",
        "user_agent",
        "request_id",
        "details",
        "result",
    ]
    assert d["timestamp"] == T0 and d["result"] == "SUCCESS"
    business = rec(T0, "POST /sessions", method="POST", route="/sessions", status=201)
    assert business.to_dict()["route"] == "/sessions"
    assert business.to_dict()["status"] == 201
    assert "duration_ms" not in business.to_dict()
    assert admin_action("post", "/admin/v1/gc/trigger") == "POST /admin/v1/gc/trigger"


async def test_append_write_query_newest_first(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", retention_days=90, clock=ManualClock(T0))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        ids = []
        for i in range(5):
            r = rec(T0 + i, operator_id=LOCAL_ADMIN, details={"n": i})
            assert log.append(r) is True
            ids.append(r.id)
        await log.flush()
        items, total = await log.query()
        nursery.cancel_scope.cancel()
    assert total == 5
    assert [item["id"] for item in items] == ids[::-1]
    assert items[0]["details"] == {"n": 4}
    path = tmp_path / "audit" / day_name(T0)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line)["id"] for line in lines] == ids


async def test_query_sees_records_appended_just_before(tmp_path: Path) -> None:
    """Read-your-writes: a query right after an append finds it, with no flush() between.

    The writer batches records for up to one write interval; an operator who acts and
    then reads the log at once must still see the action.
    """
    log = AuditLog(tmp_path / "audit", retention_days=90, clock=ManualClock(T0))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        for i in range(20):
            first = rec(T0 + 2 * i, operator_id=LOCAL_ADMIN)
            assert log.append(first) is True
            await trio.sleep(0)  # the writer takes this one as a batch of its own...
            second = rec(T0 + 2 * i + 1, operator_id=LOCAL_ADMIN)
            assert log.append(second) is True  # ...so this one waits out the interval
            items, total = await log.query(size=1)
            assert total == 2 * i + 2
            assert items[0]["id"] == second.id
        nursery.cancel_scope.cancel()


async def test_filters_paging_and_validation(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, clock=ManualClock(T0 + 3 * DAY_MS))
    ops = ["tmak-a", "tmak-b"]
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        # 3 days x 10 records, alternating operators and actions.
        for day in range(3):
            for i in range(10):
                log.append(
                    rec(
                        T0 + day * DAY_MS + i * 1000,
                        "KEY_CREATED" if i % 2 else "KEY_DISABLED",
                        operator_id=ops[i % 2],
                    )
                )
        await log.flush()
        items, total = await log.query(page=1, size=100)
        assert total == 30
        stamps = [item["timestamp"] for item in items]
        assert stamps == sorted(stamps, reverse=True)
        assert len(list(tmp_path.glob("audit-*.jsonl"))) == 3

        items, total = await log.query(operator_id="tmak-b")
        assert total == 15 and all(item["operator_id"] == "tmak-b" for item in items)
        items, total = await log.query(action="KEY_DISABLED", operator_id="tmak-a")
        assert total == 15
        items, total = await log.query(action="KEY_DISABLED", operator_id="tmak-b")
        assert (items, total) == ([], 0)

        # Time bounds are inclusive and may cut through a day.
        start, end = T0 + DAY_MS + 2000, T0 + 2 * DAY_MS + 3000
        items, total = await log.query(start_time=start, end_time=end, size=100)
        assert total == 8 + 4
        assert all(start <= item["timestamp"] <= end for item in items)

        # Paging walks the same order without overlap; past the end is empty.
        everything, _ = await log.query(size=100)
        pages = []
        for page in range(1, 6):
            chunk, total = await log.query(page=page, size=7)
            assert total == 30
            pages.extend(chunk)
        assert [i["id"] for i in pages] == [i["id"] for i in everything]
        assert await log.query(page=6, size=7) == ([], 30)

        for page, size in ((0, 20), (1, 0), (1, 101)):
            with pytest.raises(TokMeshError) as info:
                await log.query(page=page, size=size)
            assert info.value.error is E.ARG_INVALID
            assert info.value.details == {"max_size": 100}
        nursery.cancel_scope.cancel()


async def test_query_skips_torn_and_foreign_lines(tmp_path: Path) -> None:
    good = rec(T0)
    path = tmp_path / day_name(T0)
    path.write_bytes(
        orjson.dumps(good.to_dict()) + b"\n" + b"[1,2]\n" + b'{"timestamp":"x"}\n' + b'{"id":"au'
    )
    (tmp_path / "notes.txt").write_text("not an audit file")
    log = AuditLog(tmp_path, clock=ManualClock(T0))
    items, total = await log.query()
    assert total == 1 and items[0]["id"] == good.id


async def test_details_and_fields_are_redacted_on_disk(tmp_path: Path) -> None:
    token, secret = generate_token(), api_secret()
    thash = token_hash(token)
    kid = new_key_id()
    log = AuditLog(tmp_path, clock=ManualClock(T0))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.append(
            rec(
                T0,
                "AUTH_FAILED",
                result="FAILURE",
                operator_id=kid,
                user_agent=f"curl {token}",
                resource=f"/tokens/validate?t={thash}",
                details={
                    "key_id": kid,
                    "key_secret": secret,
                    "body": {"token": token, "note": f"hash {thash}"},
                    "headers": [{"Authorization": f"Bearer {kid}:{secret}"}],
                },
            )
        )
        await log.flush()
        items, _ = await log.query()
        nursery.cancel_scope.cancel()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir()).decode()
    for cred in (token, secret, thash):
        assert cred not in raw and cred[5:] not in raw
    (item,) = items
    assert item["details"]["key_id"] == kid  # public ID stays readable
    assert item["details"]["key_secret"] == "***REDACTED***"
    assert item["details"]["body"] == {
        "token": "***REDACTED***",
        "note": "hash tmth_***REDACTED***",
    }
    assert item["details"]["headers"] == [{"Authorization": "***REDACTED***"}]
    assert item["user_agent"] == "curl tmtk_***REDACTED***"
    assert item["operator_id"] == kid
    assert item["result"] == "FAILURE"


async def test_retention_purges_whole_old_days(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    # Files for 100, 91, 90 and 89 days before T0, and T0's own day.
    for back in (100, 91, 90, 89, 0):
        ts = T0 - back * DAY_MS
        (tmp_path / day_name(ts)).write_bytes(orjson.dumps(rec(ts).to_dict()) + b"\n")
    log = AuditLog(tmp_path, retention_days=90, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)  # start-up purge
        names = sorted(p.name for p in tmp_path.iterdir())
        # The file 90 days back still holds records younger than 90 days (T0 is noon).
        assert names == sorted(day_name(T0 - b * DAY_MS) for b in (90, 89, 0))
        _, total = await log.query()
        assert total == 3

        clock.advance(DAY_MS)
        removed = await log.purge()
        assert removed == [day_name(T0 - 90 * DAY_MS)]
        nursery.cancel_scope.cancel()


async def test_periodic_purge_and_current_file_removed_safely(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    log = AuditLog(tmp_path, retention_days=1, clock=clock, purge_interval_s=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.append(rec(T0))
        await log.flush()
        assert (tmp_path / day_name(T0)).exists()
        clock.advance(3 * DAY_MS)  # the open file's day is now past retention
        with trio.fail_after(5):
            while (tmp_path / day_name(T0)).exists():
                await trio.sleep(0.01)
        # Writing continues into a fresh file.
        log.append(rec(T0 + 3 * DAY_MS))
        await log.flush()
        _, total = await log.query()
        assert total == 1
        nursery.cancel_scope.cancel()


async def test_full_queue_drops_counts_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(tmp_path, queue_size=2, clock=ManualClock(T0))
    before = dropped("queue_full")
    with caplog.at_level(logging.ERROR, logger="tokmesh.audit"):
        # The writer is not running yet: the queue holds two records, then drops.
        results = [log.append(rec(T0 + i)) for i in range(5)]
    assert results == [True, True, False, False, False]
    assert dropped("queue_full") - before == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # rate-limited: one line for the burst
    assert "queue full" in errors[0].getMessage()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await log.flush()
        _, total = await log.query()
        assert total == 2
        nursery.cancel_scope.cancel()


async def test_write_error_is_logged_counted_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The day file's path is a directory: opening it for append fails with EISDIR.
    (tmp_path / day_name(T0)).mkdir()
    log = AuditLog(tmp_path, clock=ManualClock(T0))
    before = dropped("write_error")
    with caplog.at_level(logging.INFO, logger="tokmesh.audit"):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            # Three batches fail, one after the other: one ERROR for the whole run.
            for i in range(3):
                assert log.append(rec(T0 + 2 * i)) is True
                assert log.append(rec(T0 + 2 * i + 1)) is True
                await log.flush()
            # The next day writes fine: one bad file does not stop the log.
            assert log.append(rec(T0 + DAY_MS)) is True
            await log.flush()
            items, total = await log.query()
            nursery.cancel_scope.cancel()
    assert dropped("write_error") - before == 6
    assert total == 1 and items[0]["timestamp"] == T0 + DAY_MS
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "audit write failed" in errors[0].getMessage()
    assert any("audit writes work again after 3" in r.getMessage() for r in caplog.records)


async def test_aclose_writes_everything_then_rejects(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, clock=ManualClock(T0))
    before = dropped("closed")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            for i in range(100):
                log.append(rec(T0 + i))
            await log.aclose()
        # run() returned by itself: the nursery closed without a cancel.
    assert log.append(rec(T0)) is False
    assert dropped("closed") - before == 1
    _, total = await log.query(size=100)
    assert total == 100


async def test_cancellation_drains_the_queue(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, clock=ManualClock(T0))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        for i in range(50):
            log.append(rec(T0 + i))
        # Cancel before the writer had a chance to run.
        nursery.cancel_scope.cancel()
    _, total = await log.query(size=100)
    assert total == 50
    assert os.listdir(tmp_path) == [day_name(T0)]


async def test_run_creates_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "data" / "audit"
    log = AuditLog(target, clock=ManualClock(T0))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        assert target.is_dir()
        assert stat.S_IMODE(target.stat().st_mode) == 0o700
        nursery.cancel_scope.cancel()
    with pytest.raises(ValueError):
        AuditLog(target, retention_days=0)
