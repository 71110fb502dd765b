"""Redaction rules of 02 §17 / 04 §16.5."""

from __future__ import annotations

import copy
import secrets
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from tokmesh.domain.ids import new_key_id, new_node_id, new_session_id
from tokmesh.domain.tokens import generate_token, token_hash
from tokmesh.telemetry.redact import REDACTED, is_secret_name, redact, redact_field, redact_value

_BASE62 = string.ascii_letters + string.digits


def api_secret() -> str:
    """An API-key secret in the 02 §1 format: tmas_ + 43 Base62 characters."""
    return "tmas_" + "".join(secrets.choice(_BASE62) for _ in range(43))


# ------------------------------------------------------------------ value rule


def test_value_rule_masks_each_credential_kind_keeping_the_prefix() -> None:
    token, secret = generate_token(), api_secret()
    thash = token_hash(token)
    text = f"login token={token} secret:{secret} hash({thash}) end"
    out = redact_value(text)
    assert out == (
        "login token=tmtk_***REDACTED*** secret:tmas_***REDACTED*** hash(tmth_***REDACTED***) end"
    )


def test_value_rule_stops_at_characters_outside_the_body_alphabet() -> None:
    assert redact_value("x tmtk_ab-c_d.rest") == "x tmtk_***REDACTED***.rest"
    assert redact_value("a,tmas_abc,b") == "a,tmas_***REDACTED***,b"


def test_value_rule_matches_embedded_and_upper_case_prefixes() -> None:
    assert redact_value("Bearer xtmtk_abc") == "Bearer xtmtk_***REDACTED***"
    assert redact_value("TMTH_ABCDEF") == "TMTH_***REDACTED***"


def test_value_rule_leaves_public_ids_and_plain_text() -> None:
    sid, kid, nid = new_session_id(), new_key_id(), new_node_id()
    text = f"session {sid} key {kid} node {nid} tmtk- tm_tk"
    assert redact_value(text) is text


@settings(max_examples=150, deadline=None)
@given(
    before=st.text(max_size=30),
    after=st.text(max_size=30),
    kind=st.sampled_from(["token", "secret", "hash"]),
)
def test_value_rule_never_lets_a_credential_through(before: str, after: str, kind: str) -> None:
    cred = {"token": generate_token(), "secret": api_secret()}.get(kind) or token_hash(
        generate_token()
    )
    body = cred[5:]
    out = redact_value(before + cred + after)
    assert cred not in out
    assert body not in out


# ------------------------------------------------------------------ name rule


def test_name_rule_covers_every_listed_word_case_insensitively() -> None:
    for name in (
        "password",
        "DB_PASSWORD",
        "key_secret",
        "new_key_secret",
        "access_token",
        "Authorization",
        "x-api-key",
        "credentials",
        "bearer",
        "wal_encryption_key",
    ):
        assert is_secret_name(name), name
        assert redact({name: "hunter2"}) == {name: REDACTED}
    for name in ("user_id", "session_id", "message", "ip_address", "duration_ms"):
        assert not is_secret_name(name), name
        assert redact({name: "hunter2"}) == {name: "hunter2"}


def test_name_rule_exempts_public_ids_and_file_paths() -> None:
    kid, sid, nid = new_key_id(), new_session_id(), new_node_id()
    record = {
        "api_key_id": kid,
        "key_id": kid,
        "token_session": sid,
        "auth_node": nid,
        "key_file": "/etc/tokmesh/tls/server.key",
        "cert_key_file": "/etc/k.pem",
    }
    assert redact(record) == record


def test_exempt_values_still_pass_the_value_rule() -> None:
    assert redact({"key_id": "tmak-x tmas_leak"}) == {"key_id": "tmak-x tmas_***REDACTED***"}
    assert redact({"tls_key_file": "/tmp/tmtk_abc"}) == {"tls_key_file": "/tmp/tmtk_***REDACTED***"}


def test_name_rule_keeps_empty_values_and_non_strings() -> None:
    assert redact({"password": "", "token_count": 5, "auth_enabled": True, "key": None}) == {
        "password": "",
        "token_count": 5,
        "auth_enabled": True,
        "key": None,
    }


def test_name_rule_applies_to_list_elements_and_bytes() -> None:
    assert redact({"api_keys": ["a", "", "tmak-1"], "secret": b"\x00\x01"}) == {
        "api_keys": [REDACTED, "", "tmak-1"],
        "secret": REDACTED,
    }


# ------------------------------------------------------------------ recursion


def test_nested_structures_are_scanned_and_input_is_not_mutated() -> None:
    token = generate_token()
    obj = {
        "security": {
            "auth": {"allow_list": ["10.0.0.0/8"], "bearer": "abc", "cache_ttl": "60s"},
            "storage": {"wal_encryption_key": "00" * 32},
        },
        "events": [{"note": f"used {token}"}, ("tuple", token)],
        3: "tmth_deadbeef",
    }
    before = copy.deepcopy(obj)
    out = redact(obj)
    assert obj == before
    assert out == {
        "security": {
            "auth": {"allow_list": ["10.0.0.0/8"], "bearer": REDACTED, "cache_ttl": "60s"},
            "storage": {"wal_encryption_key": REDACTED},
        },
        "events": [{"note": "used tmtk_***REDACTED***"}, ["tuple", "tmtk_***REDACTED***"]],
        3: "tmth_***REDACTED***",
    }


def test_redact_field_on_nested_mapping_under_secret_name_recurses() -> None:
    # A mapping under a secret-named key is scanned, not blanked: "auth" sections of a
    # config dump keep their harmless entries readable.
    assert redact_field("auth", {"rotation_grace": "1h", "token": "t"}) == {
        "rotation_grace": "1h",
        "token": REDACTED,
    }


def test_scalars_pass_through() -> None:
    assert redact(12) == 12
    assert redact(None) is None
    assert redact(1.5) == 1.5
