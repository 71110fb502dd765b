"""Fixtures of the configuration tests: real files, real certificates (trustme)."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme

from tokmesh.config.loader import LoadResult
from tokmesh.config.validate import ValidationReport, load_and_validate


@attrs.frozen
class CertSet:
    """Paths of one CA and a leaf certificate issued by it, plus an unrelated key."""

    dir: Path
    ca: Path
    cert: Path
    key: Path
    other_key: Path


def _issue(ca: trustme.CA, directory: Path, name: str, **kwargs: Any) -> tuple[Path, Path]:
    leaf = ca.issue_cert("127.0.0.1", "localhost", **kwargs)
    cert = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    """A CA, a valid server pair and a key of another pair."""
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca.cert_pem.bytes())
    cert, key = _issue(ca, directory, "server")
    _, other_key = _issue(ca, directory, "other")
    return CertSet(directory, ca_path, cert, key, other_key)


@pytest.fixture(scope="session")
def expired_certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    """A matching pair whose certificate expired yesterday."""
    directory = tmp_path_factory.mktemp("expired")
    ca = trustme.CA()
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca.cert_pem.bytes())
    now = dt.datetime.now(dt.UTC)
    cert, key = _issue(
        ca,
        directory,
        "server",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    return CertSet(directory, ca_path, cert, key, key)


Loader = Callable[..., tuple[LoadResult, ValidationReport]]


@pytest.fixture
def load(tmp_path: Path) -> Loader:
    """Load and validate with an optional main file under ``tmp_path/etc``.

    Nothing outside ``tmp_path`` is searched: ``search_paths`` is empty unless a file is
    written, and storage defaults resolve under the config directory.
    """

    def _load(
        text: str | None = None,
        env: Mapping[str, str] | None = None,
        flags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[LoadResult, ValidationReport]:
        conf_dir = tmp_path / "etc"
        conf_dir.mkdir(exist_ok=True)
        config_path = None
        if text is not None:
            path = conf_dir / "config.yaml"
            path.write_text(text)
            config_path = str(path)
        return load_and_validate(
            config_path,
            dict(env or {}),
            dict(flags or {}),
            kwargs.pop("cwd", conf_dir),
            search_paths=kwargs.pop("search_paths", []),
            **kwargs,
        )

    return _load


def _codes(report: ValidationReport) -> list[tuple[str, str]]:
    return [(issue.key, issue.code.code) for issue in report.errors]


@pytest.fixture
def codes() -> Callable[[ValidationReport], list[tuple[str, str]]]:
    """Turn a report into (key, code) pairs, for compact assertions."""
    return _codes


NOBODY = 65534


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A fresh directory that an unprivileged user can traverse (``tmp_path`` is 0700)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a check as an unprivileged user")
    path = Path(tempfile.mkdtemp(prefix="tokmesh-cfg-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def as_nobody() -> Callable[[Callable[[], Any]], Any]:
    """Run a function in a forked child that dropped to uid/gid 65534; return its result.

    Root bypasses file permissions, so "not readable" and "not writable" checks need a
    real unprivileged process. The result comes back pickled over a pipe.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to run a check as an unprivileged user")

    def run(fn: Callable[[], Any]) -> Any:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            status = 0
            try:
                os.close(rfd)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                payload = pickle.dumps(("ok", fn()))
            except BaseException as exc:
                payload = pickle.dumps(("error", repr(exc)))
                status = 1
            with os.fdopen(wfd, "wb") as out:
                out.write(payload)
            os._exit(status)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as inp:
            data = inp.read()
        os.waitpid(pid, 0)
        kind, value = pickle.loads(data)
        if kind != "ok":
            raise AssertionError(f"child failed: {value}")
        return value

    return run
