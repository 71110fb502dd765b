"""The cheap encoding of request-level audit records writes exactly the old lines.

``reference_line`` is the encoder the audit log used before request-level records got
their fast path (a full redaction of the record's dict, then orjson): every line
``encode_write`` and ``AuditLog.append_write`` produce must equal it byte for byte,
including the values redaction has to mask.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tokmesh.domain.clock import ManualClock
from tokmesh.domain.ids import CountingUlids, decode_ulid, encode_ulid, ulid_time_ms
from tokmesh.domain.tokens import generate_token, token_hash
from tokmesh.telemetry.audit import AuditLog, AuditRecord, encode_record, encode_write
from tokmesh.telemetry.redact import is_secret_name, redact

from .test_redact import api_secret

T0 = 1_710_072_000_000
KEY_ID = "tmak-01jf8xzm7e3xqh5p8n4r6s2w0t"


def reference_line(record: AuditRecord) -> bytes:
    """The audit line as the writer encoded it before the fast path (kept verbatim)."""
    data = redact(record.to_dict())
    return orjson.dumps(data, default=lambda obj: redact(str(obj))) + b"\n"


def reference_encode_ulid(value: int) -> str:
    """The character-by-character Crockford encoder that ``encode_ulid`` replaced."""
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    chars = [""] * 26
    for i in range(25, -1, -1):
        chars[i] = alphabet[value & 31]
        value >>= 5
    return "".join(chars)


def write_fields(**changes: Any) -> dict[str, Any]:
    """The fields of a create as the HTTP pipeline audits it, with ``changes``."""
    fields: dict[str, Any] = {
        "record_id": "audit-01hs5x3kq0000000000000000",
        "timestamp": T0,
        "action": "POST /sessions",
        "result": "SUCCESS",
        "operator_id": KEY_ID,
        "operator_role": "issuer",
        "resource": "/sessions",
        "ip_address": "192.168.1.5",
        "tcp_remote_ip": "10.0.0.1",
        "user_agent": "idp/2.1",
        "request_id": "req-AbCdEfGhIjKlMnOp",
        "method": "POST",
        "route": "/sessions",
        "status": 201,
    }
    fields.update(changes)
    return fields


def as_record(fields: dict[str, Any]) -> AuditRecord:
    values = dict(fields)
    return AuditRecord(id=values.pop("record_id"), **values)


TOKEN = generate_token()
SECRET = api_secret()
HASH = token_hash(TOKEN)

# Representative records: plain ones, and every way a credential can sit in a field.
CASES = {
    "create": write_fields(),
    "renew": write_fields(
        action="POST /sessions/{session_id}/renew",
        resource="/sessions/tmss-01hs5x3kq0abcdefghjkmnpqrs/renew",
        route="/sessions/{session_id}/renew",
        status=200,
    ),
    "admin call": write_fields(
        action="POST /admin/v1/gc/trigger", operator_role="admin", route="/admin/v1/gc/trigger"
    ),
    "failure without a principal": write_fields(
        operator_id=None, operator_role=None, result="FAILURE", status=401
    ),
    "no user agent": write_fields(user_agent=""),
    "token in the path": write_fields(resource=f"/sessions/{TOKEN}/revoke"),
    "secret in the user agent": write_fields(user_agent=f"curl {KEY_ID}:{SECRET}"),
    "token hash in the request id, upper case": write_fields(request_id=HASH.upper()),
    "prefixes only": write_fields(user_agent="tmtk_ tmas_- TMTH_x"),
    "prefix in a JSON escape": write_fields(user_agent="\tmtk_abc \\tmas_x"),
    "quotes and controls": write_fields(user_agent='a"b\\c\x01\n'),
    "non-ASCII": write_fields(user_agent="Müller-Browser/1.0 ✓"),
    "Kelvin sign folds to k": write_fields(user_agent="tmt\u212a_secretvalue"),
    "long s does not fold to s": write_fields(user_agent="tma\u017f_secretvalue"),
    "a value that is not text": write_fields(ip_address=ipaddress.ip_address("10.0.0.1")),
    "not over HTTP": write_fields(
        action="DEL",
        resource="tmss-01hs5x3kq0abcdefghjkmnpqrs",
        method=None,
        route=None,
        status=None,
    ),
    "long latin-1 agent": write_fields(user_agent="\xe9" * 600),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_encode_write_equals_the_reference_encoding(name: str) -> None:
    fields = CASES[name]
    assert encode_write(**fields) == reference_line(as_record(fields))


def test_credentials_never_reach_the_line() -> None:
    for fields in CASES.values():
        line = encode_write(**fields).decode()
        for cred in (TOKEN, SECRET, HASH):
            assert cred[5:] not in line and cred[5:].upper() not in line
    assert b"tmtk_***REDACTED***" in encode_write(**CASES["token in the path"])


# Text that stresses both the fast check and redaction: prefixes in any case, the
# characters JSON escapes, and non-ASCII letters that fold to ASCII ones.
_TEXT = st.text(
    alphabet=st.sampled_from(list('tmkashTMKASH_-x9\t\\"\x01é\u212a\u017f/ ')), max_size=24
) | st.sampled_from(["tmtk_", "TmAs_x", "\ttmth_", "tmtk", ""])


@settings(max_examples=400, deadline=None)
@given(
    resource=_TEXT,
    user_agent=st.none() | _TEXT,
    request_id=st.none() | _TEXT,
    ip=st.none() | _TEXT,
    operator=st.none() | _TEXT,
    status=st.integers(100, 599),
)
def test_encode_write_equals_the_reference_for_any_text(
    resource: str,
    user_agent: str | None,
    request_id: str | None,
    ip: str | None,
    operator: str | None,
    status: int,
) -> None:
    fields = write_fields(
        resource=resource,
        user_agent=user_agent,
        request_id=request_id,
        ip_address=ip,
        tcp_remote_ip=ip,
        operator_id=operator,
        status=status,
    )
    assert encode_write(**fields) == reference_line(as_record(fields))


def test_no_record_field_falls_under_the_name_rule() -> None:
    # encode_write relies on it: with empty details only the value rule can apply.
    assert not [f.name for f in attrs.fields(AuditRecord) if is_secret_name(f.name)]


def test_encode_record_is_the_reference() -> None:
    record = AuditRecord.new(
        "KEY_CREATED",
        clock=ManualClock(T0),
        operator_id=KEY_ID,
        details={"key_secret": SECRET, "nested": [{"token": TOKEN}], "n": 1},
    )
    assert encode_record(record) == reference_line(record)


async def test_append_write_stores_the_reference_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, clock=ManualClock(T0))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        for name in sorted(CASES):
            fields = dict(CASES[name])
            del fields["record_id"], fields["timestamp"]
            assert log.append_write(**fields) is True
        await log.flush()
        nursery.cancel_scope.cancel()
    (path,) = tmp_path.iterdir()
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == len(CASES)
    ids = []
    for name, line in zip(sorted(CASES), lines, strict=True):
        stored = orjson.loads(line)
        ids.append(stored["id"])
        fields = CASES[name] | {"record_id": stored["id"], "timestamp": stored["timestamp"]}
        assert stored["timestamp"] == T0
        assert line == reference_line(as_record(fields)), name
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(ulid_time_ms(i.removeprefix("audit-")) == T0 for i in ids)


def test_encode_ulid_equals_the_reference() -> None:
    values = [0, 1, 31, 32, (1 << 80) - 1, 1 << 80, (1 << 128) - 1]
    values += [int.from_bytes(bytes([i]) * 16, "big") for i in range(256)]
    for value in values:
        assert encode_ulid(value) == reference_encode_ulid(value)


def test_counting_ulids_increase_and_carry_the_time() -> None:
    ids = CountingUlids()
    now = time.time_ns() // 1_000_000
    made = [ids.new(now + i // 1000) for i in range(5000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert [ulid_time_ms(u) for u in made[::1000]] == [now + i for i in range(5)]
    # A clock stepping back never breaks the order.
    assert ids.new(now - 10_000) > made[-1]
    # The counter's low 40 bits roll over into the cached high part.
    ids._count = (7 << 40) - 2
    rolled = [ids.new(now + 10) for _ in range(4)]
    assert rolled == sorted(rolled)
    assert [decode_ulid(u) & ((1 << 80) - 1) for u in rolled] == [
        (7 << 40) - 1 + i for i in range(4)
    ]
    # Two generators (two processes) start from unrelated random bases.
    assert CountingUlids().new(now)[10:] != CountingUlids().new(now)[10:]
