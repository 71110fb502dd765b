"""No token, secret or token hash in any log line or audit record (issue 7 acceptance 4;
02 §17, 04 §16.5).

One real node at level ``debug`` goes through creating, validating, renewing, revoking,
rotating and failing authentication in every way a caller can get it wrong (including
sending a session token where an API key belongs). Afterwards its whole stdout/stderr and
every audit file are searched for each plaintext value, each ``tmth_`` hash and its bare
hex digest, and for any ``tmtk_``/``tmas_``/``tmth_`` run that was not redacted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.integration.runtime_support import RuntimeServer
from tokmesh.domain.tokens import generate_token, token_digest, token_hash

#: a prefixed secret that is not immediately followed by the redaction marker
UNREDACTED = re.compile(r"(?i)tm(?:tk|as|th)_(?!\*\*\*REDACTED\*\*\*)[A-Za-z0-9_-]")


def _secret_of(key: str) -> str:
    return key.split(":", 1)[1]


def test_no_secret_in_logs_or_audit(tmp_path: Path) -> None:
    node = RuntimeServer(tmp_path / "node", {"telemetry": {"logging": {"level": "debug"}}})
    tokens: list[str] = []
    secrets: list[str] = []
    try:
        node.start()
        admin = node.create_admin_key()
        secrets.append(_secret_of(admin))
        issuer = node.create_key("issuer")
        validator = node.create_key("validator")
        secrets += [_secret_of(issuer), _secret_of(validator)]
        base = node.base_url
        with node.client(issuer) as iss, node.client(validator) as val, node.client(admin) as adm:
            # create: server-generated and caller-supplied tokens
            r = iss.post("/sessions", json={"user_id": "u-logs", "data": {"k": "v"}})
            assert r.status_code == 201, r.text
            sid, tok = r.json()["data"]["session_id"], r.json()["data"]["token"]
            tokens.append(tok)
            supplied = generate_token()
            tokens.append(supplied)
            r = iss.post("/sessions", json={"user_id": "u-logs", "token": supplied})
            assert r.status_code == 201, r.text
            # a reused token is a conflict that names no token
            assert (
                iss.post("/sessions", json={"user_id": "u2", "token": supplied}).status_code == 409
            )
            # validate: ok, with touch, unknown, revoked
            assert val.post("/tokens/validate", json={"token": tok}).status_code == 200
            r = val.post("/tokens/validate", json={"token": tok, "touch": True})
            assert r.status_code == 200
            unknown = generate_token()
            tokens.append(unknown)
            assert val.post("/tokens/validate", json={"token": unknown}).status_code == 401
            assert val.post("/tokens/validate", json={"token": tok + "x"}).status_code in (400, 401)
            assert iss.post(f"/sessions/{sid}/renew", json={"ttl_seconds": 600}).status_code == 200
            assert iss.post(f"/sessions/{sid}/revoke").status_code == 200
            assert val.post("/tokens/validate", json={"token": tok}).status_code == 401
            # a token where a path segment or a query value belongs
            assert val.get(f"/sessions/{supplied}").status_code in (400, 404)
            assert adm.get("/sessions", params={"user_id": supplied}).status_code in (200, 400)
            # rotation: the new secret, then both secrets in use
            issuer_id = issuer.split(":", 1)[0]
            r = adm.post(f"/admin/v1/keys/{issuer_id}/rotate")
            assert r.status_code == 200, r.text
            new_secret = r.json()["data"]["new_key_secret"]
            secrets.append(new_secret)
            for secret in (_secret_of(issuer), new_secret):
                h = {"Authorization": f"Bearer {issuer_id}:{secret}"}
                assert (
                    httpx.get(f"{base}/sessions", params={"user_id": "u"}, headers=h).status_code
                    == 200
                )
            # failed authentication in every shape
            wrong = "tmas_" + "Wr0ngSecretValue" * 3
            secrets.append(wrong)
            bad_headers = [
                {"Authorization": f"Bearer {issuer_id}:{wrong}"},
                {"Authorization": f"Bearer tmak-01hzzzzzzzzzzzzzzzzzzzzzzz:{wrong}"},
                {"X-API-Key": f"{issuer_id}:{wrong}"},
                {"X-API-Key-ID": issuer_id, "X-API-Key": wrong},
                {"Authorization": f"Bearer {supplied}"},
                {"Authorization": f"Bearer {issuer_id}:{supplied}"},
                {"Authorization": f"Basic {wrong}"},
            ]
            for h in bad_headers:
                r = httpx.post(f"{base}/sessions", json={"user_id": "x"}, headers=h)
                assert r.status_code == 401, (h, r.text)
            # a disabled key, then the emergency channel
            val_id = validator.split(":", 1)[0]
            r = adm.post(f"/admin/v1/keys/{val_id}/status", json={"status": "disabled"})
            assert r.status_code == 200
            assert val.post("/tokens/validate", json={"token": supplied}).status_code == 401
            emergency = node.socket_command("EMERGENCY_CREATE_ADMIN_KEY")["data"]["key_secret"]
            secrets.append(emergency)
            assert adm.get("/admin/v1/audit/logs").status_code == 200
        assert node.terminate(40) == 0  # flushes the audit log
    finally:
        node.stop()
    log = node.log_text()
    audit = node.audit_text()
    wal_key = (node.data_dir() / "wal" / ".encryption_key").read_text().strip()
    assert audit.count("\n") >= 5, audit  # the run really was audited
    actions = {json.loads(line)["action"] for line in audit.splitlines() if line.strip()}
    assert {"KEY_CREATED", "KEY_ROTATED", "EMERGENCY_KEY_CREATED"} <= actions, actions
    for where, text in (("log", log), ("audit", audit)):
        for tok in tokens:
            digest = token_digest(tok)
            for needle in (tok, tok[5:], token_hash(tok), digest.hex()):
                assert needle not in text, (where, "token or its hash", needle[:12])
        for secret in secrets:
            assert secret not in text and secret[5:] not in text, (where, "secret", secret[:9])
        assert wal_key and wal_key not in text, (where, "encryption key")
        leaks = [m.group(0) for m in UNREDACTED.finditer(text)]
        assert not leaks, (where, leaks[:5])
