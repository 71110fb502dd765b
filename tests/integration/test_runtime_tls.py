"""Certificate hot reload under a running HTTPS listener (issue 7 acceptance 3; 05 §17
checks 26-27; 05 §5).

One real node serves HTTPS with a certificate from a test CA; the tests replace the files
on disk and open new TLS connections to read the serial the listener presents.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
import yaml

from tests.integration.runtime_support import (
    RuntimeServer,
    open_tls,
    peer_serial,
    sample_value,
    write_leaf,
)
from tests.support.server import free_port
from tokmesh.api.tls_reload import server_context
from tokmesh.config.schema import DEFAULT_TLS12_CIPHERS, TlsPolicyConfig, default_config
from tokmesh.config.validate import validate

#: 05 §5: a replaced certificate is in effect for new connections within 5 s
RELOAD_BUDGET = 5.0
FAILURES = "tokmesh_tls_reload_failures_total"


class TlsNode:
    """The running node plus its CA, certificate paths and a metrics key."""

    def __init__(self, node: RuntimeServer, ca: trustme.CA, cert: Path, key: Path) -> None:
        self.node = node
        self.ca = ca
        self.cert = cert
        self.key = key
        self.https_port = int(node.config["server"]["https"]["address"].rsplit(":", 1)[1])
        self.metrics_key = ""

    def serial(self) -> int:
        """The serial a new TLS connection sees now."""
        return peer_serial(self.https_port, self.ca)

    def failures(self) -> float:
        """Current ``tokmesh_tls_reload_failures_total``."""
        return sample_value(self.node.scrape(self.metrics_key), FAILURES)

    def wait_serial(self, expected: int, budget: float = RELOAD_BUDGET) -> float:
        """Seconds until a new connection sees ``expected`` (fails after ``budget``)."""
        started = time.monotonic()
        seen = self.serial()
        while seen != expected:
            assert time.monotonic() - started < budget, (
                f"still serving serial {seen} after {budget} s:\n{self.node.log_tail()}"
            )
            time.sleep(0.1)
            seen = self.serial()
        return time.monotonic() - started


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    certs = root / "certs"
    certs.mkdir()
    cert, key = certs / "server.crt", certs / "server.key"
    write_leaf(ca, cert, key)
    node = RuntimeServer(
        root / "node",
        {
            "server": {
                "https": {
                    "enabled": True,
                    "address": f"127.0.0.1:{free_port()}",
                    "tls": {"cert_file": str(cert), "key_file": str(key)},
                }
            }
        },
    )
    node.start()
    try:
        t = TlsNode(node, ca, cert, key)
        node.create_admin_key()
        t.metrics_key = node.create_key("metrics")
        yield t
    finally:
        node.stop()


def _settle(t: TlsNode) -> None:
    """Wait until the watcher has seen the current files (two poll periods, no change).

    Every test ends with this, so the next one starts from a quiet watcher.
    """
    time.sleep(2.5)


def test_replaced_certificate_seen_by_new_connection_within_5s(tls: TlsNode) -> None:
    """Check 26: replace ``server.crt``/``server.key``; a new connection sees the new serial
    within 5 s, no restart; an established connection keeps working."""
    pid = tls.node.proc.pid if tls.node.proc else None
    old = tls.serial()
    with open_tls(tls.https_port, tls.ca) as established:
        new = write_leaf(tls.ca, tls.cert, tls.key)
        assert new != old
        tls.wait_serial(new)
        established.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert established.recv(64).startswith(b"HTTP/1.1 200")
    assert tls.node.proc is not None and tls.node.proc.pid == pid  # same process
    _settle(tls)


def test_broken_replacement_keeps_old_certificate(tls: TlsNode) -> None:
    """Check 27: a garbage certificate → the old one is still served, an ERROR is logged
    and ``tokmesh_tls_reload_failures_total`` grows by exactly 1."""
    current = tls.serial()
    before = tls.failures()
    since = len(tls.node.log_lines())
    good_cert = tls.cert.read_bytes()
    tmp = tls.cert.with_suffix(".garbage")
    tmp.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    tmp.replace(tls.cert)
    try:
        err = tls.node.wait_for_log(lambda d: d.get("level") == "ERROR", RELOAD_BUDGET, since)
        assert "tls" in str(err).lower() or "certificate" in str(err).lower(), err
        assert tls.serial() == current
        _settle(tls)
        assert tls.failures() == before + 1
        assert tls.serial() == current
        # The listener was never dropped: plain requests over HTTPS still work.
        with open_tls(tls.https_port, tls.ca) as s:
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        # Put a valid pair back for the next test.
        tls.cert.write_bytes(good_cert)
        _settle(tls)


def _reloaded(lines: list[dict[str, Any]], status: str) -> list[dict[str, Any]]:
    return [
        d
        for d in lines
        if d.get("event") == "config_reloaded"
        and d.get("status") == status
        and d.get("component") == "tls_manager"
    ]


def test_reload_events_are_logged(tls: TlsNode) -> None:
    """05 §6 / check 26: each reload emits ``event:"config_reloaded"`` with
    ``component:"tls_manager"``, ``changes`` and ``status`` (``success``/``failed``)."""
    since = len(tls.node.log_lines())
    new = write_leaf(tls.ca, tls.cert, tls.key)
    tls.wait_serial(new)
    ok = tls.node.wait_for_log(lambda d: bool(_reloaded([d], "success")), RELOAD_BUDGET, since)
    assert ok["level"] == "INFO"
    changes = ok["changes"]
    assert isinstance(changes, (list, dict)) and str(tls.cert) in str(changes)
    since = len(tls.node.log_lines())
    good = tls.cert.read_bytes()
    tls.cert.write_bytes(b"garbage")
    try:
        bad = tls.node.wait_for_log(lambda d: bool(_reloaded([d], "failed")), RELOAD_BUDGET, since)
        assert bad["level"] == "ERROR" and bad.get("error")
    finally:
        tls.cert.write_bytes(good)
        _settle(tls)


def test_sighup_adopts_changed_certificate_paths(tls: TlsNode) -> None:
    """05 §5: on SIGHUP the file is re-read and changed ``server.https.tls.*`` paths are
    adopted (new handshakes use the new pair)."""
    other = tls.cert.parent / "other"
    other.mkdir(exist_ok=True)
    cert2, key2 = other / "server.crt", other / "server.key"
    new = write_leaf(tls.ca, cert2, key2)
    cfg = yaml.safe_load(tls.node.config_path.read_text())
    cfg["server"]["https"]["tls"] = {"cert_file": str(cert2), "key_file": str(key2)}
    tls.node.config_path.write_text(yaml.safe_dump(cfg))
    tls.node.signal(signal.SIGHUP)
    tls.wait_serial(new)


def test_kubernetes_secret_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    """Check 30: a Kubernetes Secret volume rotates by atomically re-pointing ``..data`` to
    a new timestamped directory; the listener serves the new certificate within 5 s."""
    ca = trustme.CA()
    secret = tmp_path / "secret"
    (secret / "..v1").mkdir(parents=True)
    write_leaf(ca, secret / "..v1" / "tls.crt", secret / "..v1" / "tls.key")
    (secret / "..data").symlink_to("..v1")
    for name in ("tls.crt", "tls.key"):
        (secret / name).symlink_to(f"..data/{name}")
    node = RuntimeServer(
        tmp_path / "node",
        {
            "server": {
                "https": {
                    "enabled": True,
                    "address": f"127.0.0.1:{free_port()}",
                    "tls": {
                        "cert_file": str(secret / "tls.crt"),
                        "key_file": str(secret / "tls.key"),
                    },
                }
            }
        },
    )
    try:
        node.start()
        t = TlsNode(node, ca, secret / "tls.crt", secret / "tls.key")
        old = t.serial()
        (secret / "..v2").mkdir()
        new = write_leaf(ca, secret / "..v2" / "tls.crt", secret / "..v2" / "tls.key")
        assert new != old
        (secret / "..data_tmp").symlink_to("..v2")
        os.replace(secret / "..data_tmp", secret / "..data")  # the kubelet's atomic swap
        shutil.rmtree(secret / "..v1")
        t.wait_serial(new)
    finally:
        node.stop()


def _handshake(port: int, ca: trustme.CA, ciphers: str) -> tuple[str, str, int]:
    """The cipher a TLS 1.2 client offering only ``ciphers`` negotiates (or an SSLError)."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return cipher


# trustme issues ECDSA certificates, hence the ECDSA suites.
CBC_SUITES = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA"
AEAD_SUITES = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]


def test_tls12_offers_only_aead_suites_by_default(tls: TlsNode) -> None:
    for suite in AEAD_SUITES:
        assert _handshake(tls.https_port, tls.ca, suite)[0] == suite
    # Refused with a TLS alert that says why, not a bare close ("unexpected EOF").
    with pytest.raises(ssl.SSLError, match="ALERT_HANDSHAKE_FAILURE"):
        _handshake(tls.https_port, tls.ca, CBC_SUITES)
    with open_tls(tls.https_port, tls.ca) as s:  # TLS 1.3 as it is
        assert s.version() == "TLSv1.3"


def test_default_cipher_list_is_aead_with_forward_secrecy() -> None:
    ctx = server_context_for_test(DEFAULT_TLS12_CIPHERS)
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["aead"] for c in tls12), [c["name"] for c in tls12 if not c["aead"]]
    assert all(c["kea"] in ("kx-ecdhe", "kx-dhe") for c in tls12)
    # The list is configurable: an operator may allow CBC suites for an old client.
    wider = server_context_for_test(DEFAULT_TLS12_CIPHERS + ":" + CBC_SUITES)
    assert {"ECDHE-ECDSA-AES128-SHA256"} <= {c["name"] for c in wider.get_ciphers()}


def server_context_for_test(ciphers: str) -> ssl.SSLContext:
    """A listener context as the server builds it, with ``ciphers`` for TLS 1.2."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    with leaf.cert_chain_pems[0].tempfile() as cert, leaf.private_key_pem.tempfile() as key:
        return server_context(cert, key, ciphers=ciphers)


@pytest.mark.parametrize(
    ("ciphers", "problem"),
    [("NO-SUCH-CIPHER", "selects no cipher"), ("AES256-SHA", None), ("eNULL", "no cipher")],
)
def test_cipher_list_is_validated(ciphers: str, problem: str | None) -> None:
    cfg = default_config()
    cfg = attrs.evolve(
        cfg, security=attrs.evolve(cfg.security, tls=TlsPolicyConfig(ciphers=ciphers))
    )
    errors = [i for i in validate(cfg) if i.key == "security.tls.ciphers"]
    if problem is None:
        assert errors == []
    else:
        assert errors and errors[0].code.code == "TM-CFG-1001", errors
