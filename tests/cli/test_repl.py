"""The REPL: piped stdin (scriptable) and a pseudo-terminal (pexpect), 06 §12 checks
1, 2, 6, 7, 14, 15, 23 and completion of a session ID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from tests.cli.support import ANSI, EXE, Cli, recording_server
from tests.support.server import ServerProcess

PROMPT = r"tokmesh(:[^>\s]+)?>"


def _default_sigint() -> None:
    """Give the child the SIGINT disposition a terminal's foreground job has.

    A process started in the background of a non-interactive shell (``pytest &``, two
    parallel runs, some CI runners) inherits SIGINT as *ignored*, and Python then installs
    no KeyboardInterrupt handler: the CLI rightly honours that, so a Ctrl+C test would
    wait forever. A user pressing Ctrl+C always talks to a foreground job.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(cli: Cli, *args: str, **env: str) -> pexpect.spawn:
    return pexpect.spawn(
        EXE,
        list(args),
        env=cli.env(**env),
        encoding="utf-8",
        timeout=20,
        dimensions=(50, 250),
        preexec_fn=_default_sigint,
    )


def _config(cli: Cli, node: ServerProcess) -> Path:
    path = cli.home / ".config" / "tokmesh-cli" / "cli.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"targets:\n  dev: {{url: '{node.base_url}', api_key: '{node.admin_key}'}}\n"
        f"  sock: {{socket: '{node.socket_path}'}}\n"
    )
    path.chmod(0o600)
    return path


def test_piped_repl_modes(cli: Cli, node: ServerProcess) -> None:
    assert cli.run().code == 64  # no command, no -i, stdin not a TTY
    r = cli.run("-i", stdin="version\nexit\n")
    assert r.code == 0
    assert r.out.startswith("TokMesh CLI v") and r.out.rstrip().endswith("Goodbye!")
    assert "tokmesh-cli version " in r.out
    _config(cli, node)
    script = (
        "status\n"
        "session list\n"
        f"connect {node.base_url} -k {node.admin_key}\n"
        "session create -u repl6 -q\n"
        "session list -u repl6 -q\n"
        "bogus-command\n"
        "disconnect\n"
        "disconnect\n"
        "use nope\n"
        "use dev\n"
        "status\n"
        "quit\n"
    )
    r = cli.run("-i", stdin=script)
    assert r.code == 0, r.err
    out = r.out
    assert "Not connected.\nUse 'connect <target>' to connect to a node.\n" in out
    assert (
        "Error: Not connected.\nUse 'connect <target>' to connect to a node first.\n\n"
        "Available targets from config:\n  - dev      (" in r.err
    )
    assert f"  - sock     (socket:{node.socket_path})" in r.err
    assert re.search(
        r"Connected to tmnd-[0-9a-z]+\n  Address:  http://127\.0\.0\.1:\d+\n"
        r"  Version:  \S+\n",
        out,
    )
    assert re.search(r"tmtk_\S+\ntmss-[0-9a-z]{26}\n", out)
    assert "No such command 'bogus-command'" in r.err  # error, and the loop continued
    assert re.search(r"Disconnected from tmnd-[0-9a-z]+\.\nNot connected\.\n", out)
    assert (
        'unknown alias: "nope"\nAvailable targets: dev, sock\n'
        "Use 'connect <url>' for direct connection" in r.err
    )
    assert f"Switched to dev ({node.base_url})" in out
    assert "Connected to dev\n" in out and "  Uptime:   " in out


def test_direct_use_unknown_alias_exits_64(cli: Cli, node: ServerProcess) -> None:
    _config(cli, node)
    assert cli.run("use", "nope").code == 64
    r = cli.run("use", "dev")
    assert (r.code, r.out) == (0, f"Switched to dev ({node.base_url})\n")


def test_history_redacts_secrets_and_clears(cli: Cli, node: ServerProcess) -> None:
    key = str(node.admin_key)
    r = cli.run(
        "-i",
        stdin=f"connect {node.base_url} -k {key}\n"
        f"session validate -t tmtk_{'B' * 43} --brief\nhistory\n",
    )
    assert r.code == 0
    hist = cli.home / ".tokmesh" / "history"
    text = hist.read_text()
    assert key.split(":")[1] not in text and "B" * 43 not in text
    assert f"connect {node.base_url} -k ***REDACTED***" in text
    assert "session validate -t ***REDACTED*** --brief" in text
    assert oct(hist.stat().st_mode & 0o777) == "0o600"
    assert oct(hist.parent.stat().st_mode & 0o777) == "0o700"
    assert "    1  connect " in r.out
    hist.write_text("".join(f"version {i}\n" for i in range(1200)))
    cli.run("-i", stdin="version\n")
    assert len(hist.read_text().splitlines()) == 1000
    r = cli.run("-i", stdin="history clear\n")
    assert "History cleared." in r.out and hist.read_text() == ""


def test_pty_banner_prompt_completion_history_and_errors(cli: Cli, node: ServerProcess) -> None:
    srv = ServerProcess(cli.home.parent / "pty-node")  # one session only: Tab is unambiguous
    srv.start()
    try:
        key = srv.create_admin_key()
        c = _spawn(cli)
        c.expect("TokMesh CLI v")
        c.expect("Type 'help' for available commands, 'exit' to quit.")
        c.expect("tokmesh>")
        c.sendline(f"connect {srv.base_url} -k {key}")
        c.expect(r"Connected to (tmnd-[0-9a-z]+)")
        label = c.match.group(1)
        c.expect(f"tokmesh:{label}>")
        c.sendline("session create -u pty -q")
        c.expect(r"tmtk_\S+")
        c.expect(f"tokmesh:{label}>")
        with srv.client(key) as raw:
            sid = raw.get("/sessions").json()["data"]["items"][0]["id"]
        c.send("session get tmss-")
        c.send("\t")  # completes the only session ID
        c.expect(sid[5:])
        c.send("\r")
        c.expect("Session Details")
        c.expect(f"tokmesh:{label}>")
        c.sendline("session get tmss-00000000000000000000000000")
        c.expect("not found")
        c.expect(f"tokmesh:{label}>")  # the error did not leave the REPL
        c.send("\x1b[A")  # history: the previous line comes back
        c.expect("tmss-00000000000000000000000000")
        c.send("\x03")  # Ctrl+C discards the line
        c.expect(f"tokmesh:{label}>")
        c.sendline("session list --no-color -u pty")
        c.expect("Total: 1 sessions")
        assert "SESSION ID" in c.before and "\x1b[36m" not in c.before
        c.expect(f"tokmesh:{label}>")
        c.sendline("session list -u pty")
        c.expect("Total: 1 sessions")
        assert "\x1b[1;37mSESSION ID" in c.before  # bold white headers on a terminal
        assert "\x1b[36mtmss-" in c.before  # cyan IDs
        c.expect(f"tokmesh:{label}>")
        c.sendline("exit")
        c.expect("Goodbye!")
        c.expect(pexpect.EOF)
        c.close()
        assert c.exitstatus == 0
    finally:
        srv.stop()


def test_pty_prompts_key_confirmations_and_ctrl_d(cli: Cli, node: ServerProcess) -> None:
    key = str(node.admin_key)
    url = node.base_url
    # API key prompt on a terminal, without echo
    c = _spawn(cli, "-t", url, "session", "list", "-u", "nobody-pty", "--no-headers")
    c.expect("API Key: ")
    c.sendline(key)
    c.expect(pexpect.EOF)
    assert key.split(":")[1] not in c.before
    c.close()
    assert c.exitstatus == 0
    sid = cli.run("-t", url, "-k", key, "-o", "json", "session", "create", "-u", "pty14")
    session_id = sid.json()["data"]["session_id"]
    c = _spawn(cli, "-t", url, "-k", key, "session", "revoke", session_id)
    c.expect(re.escape(f"Are you sure you want to revoke session '{session_id}'? [y/N]: "))
    c.sendline("n")
    c.expect("Cancelled.")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 2
    assert cli.run("-t", url, "-k", key, "session", "get", session_id).code == 0
    # revoke-all by user: type the user ID
    c = _spawn(cli, "-t", url, "-k", key, "session", "revoke-all", "-u", "pty14")
    c.expect("This will revoke 1 sessions for user 'pty14'.")
    c.expect("Type 'pty14' to confirm: ")
    c.sendline("pty14")
    c.expect("Batch revoke completed.")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    assert cli.run("-t", url, "-k", key, "session", "get", session_id).code == 1
    # apikey disable: y
    kid = cli.run("-t", url, "-k", key, "apikey", "create", "-r", "metrics", "-q").out
    kid = kid.split(":")[0]
    c = _spawn(cli, "-t", url, "-k", key, "apikey", "disable", kid)
    c.expect(re.escape(f"Are you sure you want to disable API key '{kid}'? [y/N]: "))
    c.sendline("y")
    c.expect(f"API key {kid} disabled successfully.")
    c.expect(pexpect.EOF)
    c.close()
    r = cli.run("-t", url, "-k", key, "-o", "json", "apikey", "list", "--status", "disabled")
    assert kid in [k["key_id"] for k in r.json()["data"]["items"]]
    # Ctrl+D on an empty line leaves the REPL with Goodbye!, 0
    c = _spawn(cli)
    c.expect("tokmesh>")
    c.sendeof()
    c.expect("Goodbye!")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0


def test_ctrl_c_direct_exits_2_and_repl_survives(cli: Cli) -> None:
    with recording_server(hang=True) as (url, seen):
        p = subprocess.Popen(
            [EXE, "-t", url, "-k", "tmak-a:tmas_b", "session", "list"],
            env=cli.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_default_sigint,
        )
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        assert p.wait(20) == 2
        c = _spawn(cli)
        c.expect("tokmesh>")
        c.sendline(f"connect {url} -k tmak-a:tmas_b")
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(seen) >= 2
        time.sleep(0.2)
        c.sendintr()
        c.expect("Cancelled.")
        c.expect("tokmesh>")  # still in the REPL, not connected
        c.sendline("status")
        c.expect("Not connected.")
        c.sendline("exit")
        c.expect("Goodbye!")
        c.expect(pexpect.EOF)
        c.close()
        assert c.exitstatus == 0


@pytest.mark.skipif(os.name != "posix", reason="POSIX terminals only")
def test_colour_only_on_a_terminal_without_no_color(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    cli.run("-t", url, "-k", key, "session", "create", "-u", "colour12", "-q")
    args = ("-t", url, "-k", key, "session", "list", "-u", "colour12")
    c = _spawn(cli, *args)
    c.expect(pexpect.EOF)
    assert "\x1b[36mtmss-" in c.before
    for env in ({"NO_COLOR": "1"}, {}):
        c = _spawn(cli, *args, *(() if env else ("--no-color",)), **env)
        c.expect(pexpect.EOF)
        assert "tmss-" in c.before and ANSI not in c.before
