"""06 §12 checks on sessions, output formats and exit codes, against a real server."""

from __future__ import annotations

import json
import re
import time

import yaml

from tests.cli.support import ANSI, Cli, closed_port
from tests.support.server import ServerProcess

SID = re.compile(r"^tmss-[0-9a-z]{26}$")


def _create(cli: Cli, url: str, key: str, user: str, *extra: str) -> str:
    r = cli.run("-t", url, "-k", key, "session", "create", "-u", user, "-q", *extra)
    assert r.code == 0, r.err
    return r.out.strip()


def _ids(cli: Cli, url: str, key: str, user: str) -> list[str]:
    r = cli.run("-t", url, "-k", key, "session", "list", "-u", user, "-q")
    assert r.code == 0, r.err
    return r.out.split()


def test_create_prints_token_once_warning_and_quiet_prints_only_token(
    cli: Cli, admin: tuple[str, str]
) -> None:
    url, key = admin
    r = cli.run("-t", url, "-k", key, "session", "create", "-u", "c16")
    assert r.code == 0, r.err
    assert "Session created successfully!" in r.out
    assert "⚠️  IMPORTANT: The Session Token is shown ONLY ONCE." in r.out
    assert re.search(r"Session Token:  tmtk_[A-Za-z0-9_-]{43}\n", r.out)
    assert "[REMOTE: " in r.out  # location hint before the side effect
    tok = _create(cli, url, key, "c16")
    assert re.fullmatch(r"tmtk_[A-Za-z0-9_-]{43}", tok)


def test_create_argument_errors(cli: Cli, admin: tuple[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, key = admin
    r = cli.run("-t", url, "-k", key, "session", "create")
    assert (r.code, r.err.strip()) == (64, "Error: Missing required flag: --user-id")
    assert (
        cli.run("-t", url, "-k", key, "session", "create", "-u", "x", "--data", "{bad").code == 65
    )
    assert cli.run("-t", url, "-k", key, "session", "create", "-u", "x", "--data", "[1]").code == 65
    f = tmp_path / "d.json"
    f.write_text('{"a": "b"}')
    r = cli.run(
        "-t", url, "-k", key, "session", "create", "-u", "x", "--data", "{}", "--data-file", str(f)
    )
    assert r.code == 64
    r = cli.run(
        "-t", url, "-k", key, "-o", "json", "session", "create", "-u", "c16f", "--data-file", str(f)
    )
    assert r.code == 0 and r.json()["data"]["session"]["data"] == {"a": "b"}
    assert (
        cli.run(
            "-t",
            url,
            "-k",
            key,
            "session",
            "create",
            "-u",
            "x",
            "--data-file",
            str(tmp_path / "missing.json"),
        ).code
        == 64
    )


def test_get_json_envelope_and_404_error_envelope(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    _create(cli, url, key, "c10")
    (sid,) = _ids(cli, url, key, "c10")
    r = cli.run("-o", "json", "-t", url, "-k", key, "session", "get", sid.upper())
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["success"] is True and doc["data"]["id"] == sid
    # Unix-ms times became RFC 3339 UTC strings
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["data"]["created_at"])
    missing = "tmss-" + "0" * 26
    r = cli.run("-t", url, "-k", key, "session", "get", missing, "-o", "json")
    assert r.code == 1
    assert r.json() == {
        "success": False,
        "error": {"code": "TM-SESS-4040", "message": f"Session '{missing}' not found"},
    }
    r = cli.run("-t", url, "-k", key, "session", "get", missing)
    assert r.code == 1 and "Code: TM-SESS-4040" in r.err and r.out == ""


def test_output_flags_rejected(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    assert cli.run("-o", "xml", "-t", url, "-k", key, "session", "list").code == 64
    assert cli.run("-q", "-v", "-t", url, "-k", key, "session", "list").code == 64
    assert cli.run("--timeout", "3d", "version").code == 64
    assert cli.run("--insecure", "version").code == 64


def test_list_columns_no_headers_truncation_and_wide(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    for _ in range(3):
        _create(cli, url, key, "c11", "--data", '{"k1": "v", "k2": "w"}')
    ids = _ids(cli, url, key, "c11")
    assert len(ids) == 3 and all(SID.match(i) for i in ids)
    r = cli.run("-t", url, "-k", key, "session", "list", "-u", "c11")
    lines = r.out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["SESSION ID", "USER ID", "CREATED", "EXPIRES"]
    assert lines[-2:] == ["", "Total: 3 sessions (Page 1/1)"]
    # 31-char IDs show as 13 chars + "..." in tables
    assert {ln.split()[0] for ln in lines[1:4]} == {i[:13] + "..." for i in ids}
    assert ANSI not in r.out  # piped stdout: no colour
    r = cli.run("-t", url, "-k", key, "session", "list", "-u", "c11", "--no-headers")
    assert len(r.out.splitlines()) == 3
    r = cli.run("-t", url, "-k", key, "session", "list", "-u", "c11", "-v")
    assert {ln.split()[0] for ln in r.out.splitlines()[1:4]} == set(ids)
    assert "→ GET /sessions" in r.err  # -v: one line per request, never the key
    assert key.split(":")[1] not in r.err
    r = cli.run("-t", url, "-k", key, "session", "list", "-u", "c11", "-o", "wide", "-a")
    assert re.split(r"\s{2,}", r.out.splitlines()[0]) == [
        "SESSION ID",
        "USER ID",
        "DEVICE ID",
        "CREATED BY",
        "CREATED",
        "EXPIRES",
        "STATUS",
        "LAST ACCESS",
        "METADATA KEYS",
    ]
    assert r.out.splitlines()[1].endswith("k1,k2")
    r = cli.run("-t", url, "-k", key, "session", "list", "-u", "nobody-c11")
    assert (r.code, r.out) == (0, "No sessions found.\n")
    assert (
        cli.run("-t", url, "-k", key, "session", "list", "-u", "nobody-c11", "--no-headers").out
        == ""
    )
    assert cli.run("-t", url, "-k", key, "session", "list", "--page-size", "0").code == 64


def test_validate_brief_stdin_and_exit_codes(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    tok = _create(cli, url, key, "c17")
    r = cli.run("-t", url, "-k", key, "session", "validate", "-t", tok, "--brief")
    assert (r.code, r.out) == (0, "valid\n")
    bogus = "tmtk_" + "A" * 43
    r = cli.run("-t", url, "-k", key, "session", "validate", "-t", bogus, "--brief")
    assert (r.code, r.out) == (1, "invalid\n")
    r = cli.run("-t", url, "-k", key, "session", "validate", "-t", bogus, "--brief", "-q")
    assert (r.code, r.out) == (1, "")
    assert cli.run("-t", url, "-k", key, "session", "validate", stdin="").code == 64
    r = cli.run("-t", url, "-k", key, "session", "validate", "--brief", stdin=tok + "\n")
    assert (r.code, r.out) == (0, "valid\n")
    r = cli.run("-t", url, "-k", key, "session", "validate", stdin=tok + "\n")
    assert "Valid:          ✓ Yes" in r.out


def test_get_touch_posts_and_plain_get_does_not_mutate(
    cli: Cli, admin: tuple[str, str], node: ServerProcess
) -> None:
    url, key = admin
    _create(cli, url, key, "c18")
    (sid,) = _ids(cli, url, key, "c18")

    def version() -> int:
        r = cli.run("-o", "json", "-t", url, "-k", key, "session", "get", sid)
        return int(r.json()["data"]["version"])

    assert version() == 1 and version() == 1
    time.sleep(0.01)
    r = cli.run("-o", "json", "-t", url, "-k", key, "session", "get", sid, "--touch")
    assert r.code == 0, r.err
    assert version() == 2


def test_renew_requires_ttl_and_sends_seconds(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    _create(cli, url, key, "c18r")
    (sid,) = _ids(cli, url, key, "c18r")
    assert cli.run("-t", url, "-k", key, "session", "renew", sid).code == 64
    before = time.time()
    r = cli.run("-o", "json", "-t", url, "-k", key, "session", "extend", sid, "--ttl", "12h")
    assert r.code == 0, r.err
    new = r.json()["data"]["new_expires_at"]
    import datetime as dt

    at = dt.datetime.fromisoformat(new.replace("Z", "+00:00")).timestamp()
    assert abs(at - (before + 43200)) < 10
    r = cli.run("-t", url, "-k", key, "session", "renew", sid, "--ttl", "1h")
    assert "Session renewed successfully!" in r.out and "  Previous:        " in r.out


def test_revoke_needs_terminal_or_force_and_is_idempotent(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    _create(cli, url, key, "c14")
    (sid,) = _ids(cli, url, key, "c14")
    r = cli.run("-t", url, "-k", key, "session", "revoke", sid)
    assert r.code == 64 and "stdin is not a terminal" in r.err
    assert _ids(cli, url, key, "c14") == [sid]  # nothing was revoked
    r = cli.run("-t", url, "-k", key, "session", "revoke", sid, "-f")
    assert r.code == 0 and "Session revoked successfully." in r.out
    assert _ids(cli, url, key, "c14") == []
    assert cli.run("-t", url, "-k", key, "session", "revoke", sid, "-f", "-q").code == 0


def test_revoke_all_filters_and_force(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    assert cli.run("-t", url, "-k", key, "session", "revoke-all").code == 64
    for _ in range(2):
        _create(cli, url, key, "c15")
    r = cli.run("-t", url, "-k", key, "session", "revoke-all", "-u", "c15", "--dry-run")
    assert r.code == 0 and r.out.startswith("[DRY RUN] Would revoke 2 sessions:")
    assert len(_ids(cli, url, key, "c15")) == 2
    r = cli.run("-t", url, "-k", key, "session", "revoke-all", "c15", "-f")
    assert r.code == 0, r.err
    assert "Batch revoke completed." in r.out and re.search(r"Total Revoked:\s+2\n", r.out)
    assert _ids(cli, url, key, "c15") == []
    # a non-user filter goes through list + per-session revoke
    _create(cli, url, key, "c15d", "-d", "dev-c15")
    r = cli.run("-t", url, "-k", key, "session", "revoke-all", "-d", "dev-c15", "-f", "-o", "json")
    assert r.code == 0 and r.json()["data"]["revoked_count"] >= 1
    assert _ids(cli, url, key, "c15d") == []


def test_yaml_status_and_aliases(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    r = cli.run("-o", "yaml", "-t", url, "-k", key, "system", "status")
    doc = yaml.safe_load(r.out)
    assert r.code == 0 and doc["success"] is True and doc["data"]["node_id"].startswith("tmnd-")
    _create(cli, url, key, "c20")
    full = cli.run("-t", url, "-k", key, "session", "list", "-u", "c20", "-q")
    short = cli.run("-t", url, "-k", key, "sess", "list", "-u", "c20", "-q")
    assert full.out == short.out and full.out.strip()
    assert (
        cli.run("-t", url, "-k", key, "key", "list", "-q").out
        == cli.run("-t", url, "-k", key, "apikey", "list", "-q").out
    )
    assert cli.run("-t", url, "-k", key, "sys", "status").code == 0
    r1 = cli.run("-t", url, "-k", key, "cfg", "show", "-o", "json")
    r2 = cli.run("-t", url, "-k", key, "config", "server", "show", "-o", "json")
    assert (r1.code, r1.out) == (r2.code, r2.out)
    r = cli.run("session", "list", "--help")
    assert r.code == 0 and "Aliases: session, sess" in r.out
    assert "Global Flags:" in r.out and "Flags:" in r.out
    assert cli.run("clusters", "status").code == 64  # an unknown command
    assert cli.run("config").code == 64


def test_unreachable_and_unauthorised(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    r = cli.run("-t", f"http://127.0.0.1:{closed_port()}", "-k", key, "session", "list")
    assert r.code == 69 and "Code: TM-CLI-1002" in r.err
    r = cli.run("-t", url, "-k", "tmak-" + "0" * 26 + ":tmas_nope", "session", "list")
    assert r.code == 1 and re.search(r"Code: TM-AUTH-401\d", r.err)
    r = cli.run("-t", url, "-k", "garbage", "session", "list")
    assert r.code == 64  # malformed key: no request at all
    r = cli.run("-t", url, "session", "list", "-o", "json")
    assert r.code == 64 and "API key required" in json.dumps(r.json())
