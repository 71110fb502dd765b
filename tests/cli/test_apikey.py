"""06 §12 checks 11, 19 (and the apikey half of 14) against a real server."""

from __future__ import annotations

import datetime as dt
import re
import time

from tests.cli.support import Cli
from tests.support.server import ServerProcess


def test_create_validation_and_expiry(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    r = cli.run("-t", url, "-k", key, "apikey", "create", "-r", "superuser")
    assert r.code == 64 and "Role must be one of: admin, issuer, validator, metrics" in r.err
    assert "TM-ARG-1001" in r.err
    r = cli.run(
        "-t", url, "-k", key, "apikey", "create", "-r", "issuer", "--allowedlist", "10.0.0.0/8,bad"
    )
    assert r.code == 64
    before = time.time()
    r = cli.run(
        "-t",
        url,
        "-k",
        key,
        "-o",
        "json",
        "key",
        "create",
        "-r",
        "validator",
        "--expires-in",
        "720h",
        "-d",
        "ci",
    )
    assert r.code == 0, r.err
    exp = dt.datetime.fromisoformat(r.json()["data"]["expires_at"].replace("Z", "+00:00"))
    assert abs(exp.timestamp() - (before + 30 * 86400)) < 10
    r = cli.run("-t", url, "-k", key, "apikey", "create", "-r", "metrics", "-q")
    assert re.fullmatch(r"tmak-[0-9a-z]{26}:tmas_[0-9A-Za-z]+\n", r.out)
    r = cli.run("apikey", "create", "--help")
    assert "both must match (intersection)" in " ".join(r.out.split())


def test_list_wide_never_shows_secrets(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    cli.run("-t", url, "-k", key, "apikey", "create", "-r", "issuer", "--allowedlist", "10.0.0.0/8")
    r = cli.run("-t", url, "-k", key, "apikey", "list", "-o", "wide")
    assert r.code == 0
    header = re.split(r"\s{2,}", r.out.splitlines()[0])
    assert header == [
        "KEY ID",
        "ROLE",
        "STATUS",
        "EXPIRES",
        "DESCRIPTION",
        "CREATED AT",
        "LAST USED",
        "RATE LIMIT",
        "ALLOWEDLIST",
    ]
    assert "tmas_" not in r.out and "Never" in r.out
    assert re.search(r"Total: \d+ keys\n$", r.out)
    r = cli.run("-t", url, "-k", key, "apikey", "list", "-o", "json")
    assert "tmas_" not in r.out and r.json()["data"]["total_items"] >= 2


def test_enable_disable_rotate(cli: Cli, admin: tuple[str, str], node: ServerProcess) -> None:
    url, key = admin
    new = cli.run("-t", url, "-k", key, "apikey", "create", "-r", "validator", "-q").out.strip()
    kid = new.split(":")[0]
    assert cli.run("-t", url, "-k", key, "apikey", "disable", kid).code == 64  # no TTY
    r = cli.run("-t", url, "-k", key, "apikey", "disable", kid.upper(), "-f")
    assert r.code == 0 and f"API key {kid} disabled successfully." in r.out
    r = cli.run("-t", url, "-k", new, "session", "validate", "-t", "tmtk_" + "A" * 43)
    assert r.code == 1 and "TM-AUTH-4012" in r.err
    r = cli.run("-t", url, "-k", key, "apikey", "enable", kid)
    assert r.code == 0 and f"API key {kid} enabled successfully." in r.out
    r = cli.run("-t", url, "-k", key, "apikey", "rotate", kid)
    assert r.code == 0 and "ROTATED API SECRET" in r.out
    assert re.search(r"Old Secret Valid:  Until \S+Z \(1h grace period\)", r.out)
    r = cli.run("-t", url, "-k", key, "apikey", "rotate", "tmak-" + "0" * 26)
    assert r.code == 1 and "API Key 'tmak-00000000000000000000000000' not found" in r.err
    assert "Code: TM-ADMIN-4041" in r.err


def test_create_emergency_socket_only(
    cli: Cli, admin: tuple[str, str], node: ServerProcess
) -> None:
    url, key = admin
    r = cli.run("-t", url, "-k", key, "apikey", "create-emergency")
    assert r.code == 64 and "create-emergency requires a local socket connection" in r.err
    r = cli.run("-t", f"socket:{node.socket_path}", "apikey", "create-emergency", "-d", "ops")
    assert r.code == 0, r.err
    assert r.out.startswith("[LOCAL] ") and "⚠️  EMERGENCY ADMIN KEY CREATED" in r.out
    assert "WARNING: This key was created via emergency channel." in r.out
    r = cli.run("-t", f"socket:{node.socket_path}", "-q", "apikey", "create-emergency")
    new = r.out.strip()
    assert cli.run("-t", url, "-k", new, "system", "status").code == 0
