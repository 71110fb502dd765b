"""The README's quick start and first steps, walked the way a newcomer would: once as root
and once as an unprivileged user, each in a fresh copy of the sources with a fresh venv.

Each walk runs the quick start's server block (venv, ``pip install .``, ``tokmesh-server``)
in the background, waits for ``/ready``, checks the line the server prints on stderr,
then runs every command line of "First steps" and "Command line" in one shell session
(the second terminal): the first admin key from ``tokmesh-cli -t local``, a session
created with curl, its token validated (200, ``valid: true``), and the rest. Finally
Ctrl+C (SIGINT) must stop the server cleanly, and the admin key's secret must be in no
line the server wrote. The lines come from README.md (see ``readme_walk``), so README
drift breaks this test.

``pip install .`` runs as written, against a wheelhouse built once from this machine's
pip configuration (``PIP_FIND_LINKS`` + ``PIP_NO_INDEX``), so the walks need no network.
The root walk binds ``/var/run/tokmesh-server/tokmesh-server.sock``; it is skipped when a
node already answers there, and when the tests do not run as root. As root, the
unprivileged walk runs as the user ``tokmesh-walk`` (created if missing) via ``setpriv``;
otherwise it runs as the current user. Both walks run at the same time.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.readme_walk import (
    README,
    Shell,
    chown_tree,
    command_lines,
    copy_sources,
    fill,
    server_block,
    sh_blocks,
    stop_group,
)
from tests.support.server import free_port
from tokmesh.api.local_socket_path import DEFAULT_SOCKET_PATH, FIRST_KEY_COMMAND

pytestmark = pytest.mark.timeout(1200)

WALK_USER = "tokmesh-walk"
KEY_RE = r"tmak-[0-9a-z]{26}:tmas_[0-9A-Za-z]+"
HINT_PREFIX = "tokmesh-server: no API key exists yet"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT = 900.0  # a fresh venv and pip install on a loaded 2-core machine


@dataclass
class Walk:
    """One walk: who runs it, where, and what was started for it."""

    mode: str  # "root" or "user"
    uid: int  # the walk's user
    prefix: list[str]  # the command prefix that runs a process as that user
    base: Path  # the walk's own directory: src/ (the checkout), home/, server logs
    env: dict[str, str]
    port: int
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    shells: list[Shell] = field(default_factory=list)

    @property
    def src(self) -> Path:
        return self.base / "src"

    def log(self, name: str) -> str:
        path = self.base / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for shell in self.shells:
            shell.close()
        for proc in self.procs:
            stop_group(proc)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _machine_skip_reason() -> str | None:
    """Why this machine cannot host a walk at all (a zero-config start is the point)."""
    if shutil.which("curl") is None:
        return "curl is not installed; the README's first steps use it"
    for path in ("/etc/tokmesh-server/config.yaml", "/etc/tokmesh-cli/cli.yaml"):
        if Path(path).exists():
            return f"{path} exists: this machine is not a zero-config machine"
    return None


def _runner_python(base: Path) -> str:
    """A directory with only ``python3`` (this test's interpreter) in it: a PATH entry
    that gives the walk a Python without also giving it this environment's
    ``tokmesh-server`` and ``tokmesh-cli``."""
    bin_dir = base / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").symlink_to(sys.executable)
    return str(bin_dir)


def _python_path(prefix: list[str], candidates: list[str]) -> str | None:
    """The first PATH on which ``python3`` (run through ``prefix``) is >= 3.11 with venv."""
    probe = "import ensurepip, sys, venv; sys.exit(sys.version_info < (3, 11))"
    for path in candidates:
        r = subprocess.run(
            [*prefix, "python3", "-c", probe],
            env={"PATH": path, "LANG": "C.UTF-8"},
            capture_output=True,
            cwd="/",
            timeout=60,
        )
        if r.returncode == 0:
            return path
    return None


def _walk_user() -> tuple[int, int]:
    """uid and gid of the unprivileged walk user, created when missing."""
    try:
        entry = pwd.getpwnam(WALK_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", WALK_USER],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        entry = pwd.getpwnam(WALK_USER)
    return entry.pw_uid, entry.pw_gid


def _plan(mode: str, wheelhouse: Path) -> Walk | str:
    """A ready-to-run walk, or the reason it cannot run here."""
    base = Path(tempfile.mkdtemp(prefix=f"tmwalk-{mode}-", dir="/tmp"))  # short: sun_path
    runner_bin = _runner_python(base)
    if mode == "root":
        if os.geteuid() != 0:
            shutil.rmtree(base, ignore_errors=True)
            return "the tests do not run as root; the root walk needs root"
        if _answers(DEFAULT_SOCKET_PATH):
            shutil.rmtree(base, ignore_errors=True)
            return f"a node already answers on {DEFAULT_SOCKET_PATH}; the walk would take it over"
        prefix: list[str] = []
        uid = gid = 0
        path = _python_path(prefix, [f"{runner_bin}:{SYSTEM_PATH}", SYSTEM_PATH])
    elif os.geteuid() == 0:
        if shutil.which("setpriv") is None or shutil.which("useradd") is None:
            shutil.rmtree(base, ignore_errors=True)
            return "setpriv or useradd is missing: cannot run a walk as an unprivileged user"
        uid, gid = _walk_user()
        prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        path = _python_path(prefix, [SYSTEM_PATH, f"{runner_bin}:{SYSTEM_PATH}"])
    else:
        prefix, uid, gid = [], os.getuid(), os.getgid()
        path = _python_path(prefix, [f"{runner_bin}:{SYSTEM_PATH}"])
    if path is None:
        shutil.rmtree(base, ignore_errors=True)
        return f"no Python >= 3.11 with venv that the {mode} walk's user can run"
    copy_sources(base / "src")
    (base / "home").mkdir()
    chown_tree(base, uid, gid)
    env = {
        "PATH": path,
        "HOME": str(base / "home"),
        "XDG_CONFIG_HOME": str(base / "home" / ".config"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    port = free_port()
    env["TOKMESH_SERVER_HTTP_ADDRESS"] = f"127.0.0.1:{port}"
    return Walk(mode, uid, prefix, base, env, port)


@pytest.fixture(scope="module")
def wheelhouse() -> Iterator[Path]:
    """Wheels of every dependency and of the build backend, built once, readable by all."""
    reason = _machine_skip_reason()
    if reason:
        pytest.skip(reason)
    house = Path(tempfile.mkdtemp(prefix="tmwheels-", dir="/tmp"))
    build = Path(tempfile.mkdtemp(prefix="tmwheels-src-", dir="/tmp"))
    try:
        src = copy_sources(build / "src")
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(house), str(src)]
        r = subprocess.run(
            [*cmd, "setuptools>=68", "wheel"], capture_output=True, text=True, timeout=900
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        for own in house.glob("tokmesh-*.whl"):
            own.unlink()  # the walk builds the project itself, from its checkout
        house.chmod(0o755)
        for wheel in house.iterdir():
            wheel.chmod(0o644)
        yield house
    finally:
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(house, ignore_errors=True)


@pytest.fixture(scope="module")
def walks(wheelhouse: Path) -> Iterator[dict[str, Future[str] | str]]:
    """Both walks, started at once: mode -> the running walk (its transcript) or the
    reason it is skipped. Every server and shell is stopped at teardown."""
    plans = {mode: _plan(mode, wheelhouse) for mode in ("root", "user")}
    pool = ThreadPoolExecutor(max_workers=2)
    started: dict[str, Future[str] | str] = {}
    for mode, plan in plans.items():
        started[mode] = plan if isinstance(plan, str) else pool.submit(_run_walk, plan)
    try:
        yield started
    finally:
        for plan in plans.values():
            if isinstance(plan, Walk):
                plan.stop()
        pool.shutdown(wait=True)
        for plan in plans.values():
            if isinstance(plan, Walk):
                shutil.rmtree(plan.base, ignore_errors=True)


def _expected_hint(walk: Walk) -> str:
    if walk.mode == "root":
        return (
            f"{HINT_PREFIX}; local admin socket: {DEFAULT_SOCKET_PATH}; "
            f"create the first admin key with: {FIRST_KEY_COMMAND}"
        )
    cwd = walk.src.resolve()
    sock = cwd / "data" / "tokmesh-server.sock"
    return (
        f"{HINT_PREFIX}; local admin socket: {sock}; create the first admin key with: "
        f"{FIRST_KEY_COMMAND} (run in {cwd}), or from anywhere: "
        f"tokmesh-cli -t socket:{sock} apikey create-emergency"
    )


def _start_server(walk: Walk, block: str) -> subprocess.Popen[Any]:
    with open(walk.base / "server.out", "wb") as out, open(walk.base / "server.err", "wb") as err:
        proc = subprocess.Popen(
            [*walk.prefix, "bash", "-c", "set -e\n" + block],
            cwd=walk.src,
            env=walk.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    walk.procs.append(proc)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        assert proc.poll() is None, f"the quick start ended ({proc.returncode}):\n" + (
            walk.log("server.out")[-3000:] + walk.log("server.err")[-3000:]
        )
        try:
            if httpx.get(f"http://127.0.0.1:{walk.port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, walk.log("server.err")[-3000:]
        time.sleep(0.5)


def _hint(walk: Walk) -> str:
    deadline = time.monotonic() + 20
    while True:
        for line in walk.log("server.err").splitlines():
            if line.startswith(HINT_PREFIX):
                return line
        assert time.monotonic() < deadline, walk.log("server.err")[-3000:]
        time.sleep(0.1)


def _run_walk(walk: Walk) -> str:
    """Walk the README; the transcript of the command lines. Fails on the first step
    that does not do what the README says."""
    sections = sh_blocks(README.read_text(encoding="utf-8"))
    lines = command_lines(sections)
    assert any(FIRST_KEY_COMMAND in line for line in lines), lines
    server = _start_server(walk, fill(server_block(sections), walk.port, None))
    assert _hint(walk) == _expected_hint(walk)

    shell = Shell(walk.prefix, walk.src, walk.env)
    walk.shells.append(shell)
    assert shell.run("id -u") == (0, str(walk.uid))
    transcript: list[str] = []
    key = ""
    session: dict[str, Any] | None = None
    validated = False
    for raw in lines:
        line = fill(raw, walk.port, session)
        code, out = shell.run(line)
        transcript.append(f"$ {line}\n{out}\n[exit {code}]")
        assert code == 0, "\n".join(transcript) + walk.log("server.err")[-2000:]
        if re.match(r"(export )?KEY=", line):
            key = shell.run('printf "%s" "$KEY"')[1]
            assert re.fullmatch(KEY_RE, key), "\n".join(transcript)
        if line.startswith("curl "):
            doc = json.loads(out)
            assert doc["code"] == "OK", "\n".join(transcript)
            data = doc["data"]
            if "token" in data and "session_id" in data:
                session = data
            if "/tokens/validate" in line:
                assert session is not None and data["valid"] is True
                assert data["session"]["id"] == session["session_id"]
                validated = True
    assert key and validated, "\n".join(transcript)

    # What the README says a gateway gets for a malformed token.
    r = httpx.post(
        f"http://127.0.0.1:{walk.port}/tokens/validate",
        json={"token": "not-a-token"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 400 and r.json()["code"] == "TM-TOKN-4000", r.text

    # Ctrl+C in the first terminal: a clean stop.
    assert stop_group(server, signal.SIGINT) == 0, walk.log("server.err")[-3000:]
    key_id, secret = key.split(":")
    logged = walk.log("server.out") + walk.log("server.err")
    created = [
        doc
        for doc in (json.loads(x) for x in logged.splitlines() if x.startswith("{"))
        if doc.get("event") == "EMERGENCY_KEY_CREATED"
    ]
    assert [(d["key_id"], d["role"]) for d in created] == [(key_id, "admin")], created
    assert secret not in logged and secret[5:] not in logged
    return "\n".join(transcript)


def _result(walks: dict[str, Future[str] | str], mode: str) -> str:
    outcome = walks[mode]
    if isinstance(outcome, str):
        pytest.skip(outcome)
    return outcome.result()


def test_readme_walk_as_root(walks: dict[str, Future[str] | str]) -> None:
    """As root: the socket is the default one and ``-t local`` finds it."""
    transcript = _result(walks, "root")
    print(transcript)  # shown when the test fails
    assert "tokmesh-cli -t local apikey create-emergency" in transcript


def test_readme_walk_as_normal_user(walks: dict[str, Future[str] | str]) -> None:
    """Without root: the socket falls back to ``./data`` and ``-t local`` still finds it."""
    transcript = _result(walks, "user")
    print(transcript)  # shown when the test fails
    assert "tokmesh-cli -t local apikey create-emergency" in transcript
