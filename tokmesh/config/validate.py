"""Validation of a loaded configuration (spec 05 §4, 02 §14/§18).

Runs after the merge and path resolution, in the order types -> ranges -> cross-field ->
files, and **collects every error**: the server prints them all and exits 1. Keys of a
disabled listener, of a disabled cluster or of disabled tracing are skipped ("if on"),
except the seeds-without-cluster check.

The same validator serves ``tokmesh-server --test`` (``create_dirs=False``: it creates
nothing and checks that the nearest existing ancestor of a missing directory is
writable, D25), the real start (``create_dirs=True``: ``mkdir -p`` with mode 0750 and a
``.write_test`` probe) and ``POST /admin/v1/config/validate`` (:func:`validate_yaml_text`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tokmesh.config.descriptors import above_limit_warning, descriptor_limit
from tokmesh.config.issues import ConfigIssue, issue_for_key
from tokmesh.config.loader import LoadResult, load_config, load_yaml_text
from tokmesh.config.schema import KEYS, Config, KeySpec, Kind, config_to_flat
from tokmesh.config.types import ConfigValueError, parse_addr
from tokmesh.domain.errors import E, ErrorCode
from tokmesh.storage.cipher import out_of_space, probe_write

__all__ = [
    "HTTPS_DISABLED_WARNING",
    "ValidationReport",
    "load_and_validate",
    "validate",
    "validate_config",
    "validate_yaml_text",
]

HTTPS_DISABLED_WARNING = (
    "HTTPS is disabled (enable server.https.enabled and configure server.https.tls.* for "
    "production)"
)
CERT_WARN_DAYS = 30
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Listeners that bind a port, with their enable flag (05 §4 port-clash rule).
_LISTENERS: tuple[tuple[str, str], ...] = (
    ("server.http.address", "server.http.enabled"),
    ("server.https.address", "server.https.enabled"),
    ("server.redis.address", "server.redis.enabled"),
    ("server.redis_tls.address", "server.redis_tls.enabled"),
    ("cluster.listen_address", "cluster.enabled"),
)
# TLS owners: (enable flag, key prefix, CA required).
_TLS_OWNERS: tuple[tuple[str, str, bool], ...] = (
    ("server.https.enabled", "server.https.tls.", False),
    ("server.redis_tls.enabled", "server.redis_tls.tls.", False),
    ("cluster.enabled", "cluster.tls.", True),
)


@attrs.frozen
class ValidationReport:
    """Errors (fatal) and warnings (startup WARN lines) of one validation run."""

    errors: list[ConfigIssue]
    warnings: list[str]

    @property
    def valid(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def to_api(self) -> dict[str, Any]:
        """``data`` of ``POST /admin/v1/config/validate``: ``{valid, errors: [...]}``."""
        return {"valid": self.valid, "errors": [e.to_api() for e in self.errors]}


class _Ctx:
    """Mutable state of one validation run."""

    def __init__(
        self,
        cfg: Config,
        origins: Mapping[str, str],
        file_label: str,
        create_dirs: bool,
        now: dt.datetime,
        resolve_hosts: bool,
    ) -> None:
        self.cfg = cfg
        self.flat = config_to_flat(cfg)
        self.origins = origins
        self.file_label = file_label
        self.create_dirs = create_dirs
        self.now = now
        self.resolve_hosts = resolve_hosts
        self.errors: list[ConfigIssue] = []
        self.warnings: list[str] = []

    def on(self, key: str) -> bool:
        return bool(self.flat[key])

    def error(
        self,
        key: str,
        code: ErrorCode,
        problem: str,
        expected: str | None = None,
        *,
        solution: str | None = None,
        show_value: bool = True,
    ) -> None:
        base = key.split("[", 1)[0]
        value: Any = self.flat.get(base)
        if "[" in key and isinstance(value, tuple):
            index = int(key[key.index("[") + 1 : key.index("]")])
            value = value[index]
        self.errors.append(
            issue_for_key(
                key,
                code,
                problem,
                expected,
                value=value,
                show_value=show_value,
                from_env=self.origins.get(base) == "env",
                file_label=self.file_label,
                solution=solution,
            )
        )


# ============================================================================ per-key checks


def _gated_off(ctx: _Ctx, spec: KeySpec) -> bool:
    if spec.gate is not None and not ctx.on(spec.gate):
        return True
    # sync_interval matters only in batch mode (05 §3.5).
    return spec.name == "storage.wal.sync_interval" and ctx.flat["storage.wal.sync_mode"] != "batch"


def _check_range(ctx: _Ctx, spec: KeySpec, value: Any) -> None:
    if spec.minimum is not None and value < spec.minimum:
        ctx.error(spec.name, E.CFG_RANGE, f"value below the minimum of {spec.name}")
    elif spec.maximum is not None and value > spec.maximum:
        ctx.error(spec.name, E.CFG_RANGE, f"value above the maximum of {spec.name}")


def _check_addr(ctx: _Ctx, key: str, value: str) -> tuple[str, int] | None:
    if not value:
        ctx.error(key, E.CFG_TYPE, "address is empty")
        return None
    try:
        return parse_addr(value)
    except ConfigValueError as err:
        ctx.error(key, err.code, err.problem, err.expected)
        return None


def _check_networks(ctx: _Ctx, spec: KeySpec, items: tuple[str, ...]) -> None:
    for i, item in enumerate(items):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            ctx.error(f"{spec.name}[{i}]", E.CFG_TYPE, "not an IP address or CIDR", "IP or CIDR")


def _check_key(ctx: _Ctx, spec: KeySpec) -> None:
    value = ctx.flat[spec.name]
    kind = spec.kind
    if kind in (Kind.INT, Kind.FLOAT, Kind.DURATION, Kind.SIZE, Kind.RATE):
        _check_range(ctx, spec, value)
    elif kind is Kind.ENUM:
        if value not in spec.choices:
            ctx.error(spec.name, E.CFG_TYPE, f"not one of {', '.join(spec.choices)}")
    elif kind is Kind.ADDR:
        # advertise_address has its own "required" rule below.
        if value or spec.name != "cluster.advertise_address":
            _check_addr(ctx, spec.name, value)
    elif kind is Kind.ADDR_LIST:
        for i, item in enumerate(value):
            try:
                parse_addr(item)
            except ConfigValueError as err:
                ctx.error(f"{spec.name}[{i}]", err.code, err.problem, err.expected)
    elif kind is Kind.STR_LIST:
        # The etcd URLs have rules of their own (checked with the cluster's settings).
        if spec.name != "cluster.etcd.endpoints":
            _check_networks(ctx, spec, value)
    elif kind is Kind.SECRET:
        # The at-rest key is 64 hex characters; a password is whatever etcd accepts.
        if value and spec.name != "cluster.etcd.password" and not _HEX64.fullmatch(value):
            ctx.error(spec.name, E.CFG_TYPE, "must be empty or exactly 64 hex characters")
    elif kind is Kind.URL:
        if value and not _is_http_url(value):
            ctx.error(spec.name, E.CFG_TYPE, "not an http(s) URL")
    elif kind is Kind.STR and spec.name == "cluster.node_id" and value:
        _check_node_id(ctx, spec, value)


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:  # an unbalanced IPv6 bracket, for one
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _check_node_id(ctx: _Ctx, spec: KeySpec, value: str) -> None:
    if not _NODE_ID.fullmatch(value):
        ctx.error(
            spec.name,
            E.CFG_TYPE,
            "invalid node id",
            "1-128 characters: letters, digits, '.', '_', '-'",
        )


# ============================================================================ cross-field


def _check_cross(ctx: _Ctx) -> None:
    f = ctx.flat
    if f["server.shutdown.grace_period"] > f["server.shutdown.timeout"]:
        ctx.error(
            "server.shutdown.grace_period",
            E.CFG_RANGE,
            "grace_period is longer than server.shutdown.timeout",
        )
    if f["session.ttl.default"] > f["session.ttl.max"]:
        ctx.error("session.ttl.default", E.CFG_RANGE, "ttl.default is greater than ttl.max")
    if f["cluster.discovery.seeds"] and not f["cluster.enabled"]:
        ctx.error(
            "cluster.discovery.seeds",
            E.CFG_DEPENDENCY,
            "seeds are set but the cluster is off: you must explicitly enable cluster.enabled",
            "cluster.enabled: true, or no seeds",
            solution="set cluster.enabled: true (TOKMESH_CLUSTER_ENABLED=true) or remove the seeds",
        )
    if f["cluster.enabled"]:
        adv = f["cluster.advertise_address"]
        if not adv:
            ctx.error(
                "cluster.advertise_address",
                E.CFG_DEPENDENCY,
                "cluster is enabled but advertise_address is not set",
            )
        else:
            host_port = _check_addr_quiet(adv)
            if host_port is not None and _is_wildcard(host_port[0]):
                ctx.error(
                    "cluster.advertise_address",
                    E.CFG_RANGE,
                    "advertise_address must be reachable by peers, not a wildcard host",
                )
    if f["telemetry.tracing.enabled"] and not f["telemetry.tracing.endpoint"]:
        ctx.error(
            "telemetry.tracing.endpoint",
            E.CFG_DEPENDENCY,
            "tracing is enabled but no endpoint is set",
        )


def _check_addr_quiet(value: str) -> tuple[str, int] | None:
    try:
        return parse_addr(value)
    except ConfigValueError:
        return None


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_ports(ctx: _Ctx) -> None:
    """1005 when two enabled listeners share a port on overlapping hosts (D26)."""
    bound: list[tuple[str, str, int]] = []
    for key, flag in _LISTENERS:
        if not ctx.on(flag):
            continue
        hp = _check_addr_quiet(ctx.flat[key])
        if hp is None:
            continue
        host, port = hp
        for other_key, other_host, other_port in bound:
            if port != other_port:
                continue
            if host == other_host or _is_wildcard(host) or _is_wildcard(other_host):
                ctx.error(
                    key,
                    E.CFG_CONFLICT,
                    f"port {port} of {key} conflicts with {other_key} ({ctx.flat[other_key]})",
                    "a port not used by another enabled listener",
                    solution=f"give {key} or {other_key} another port, or disable one of them",
                )
                break
        bound.append((key, host, port))


def _check_etcd(ctx: _Ctx) -> None:
    """The control plane's settings, when the cluster is on: at least one well-formed
    endpoint, a prefix that cannot run into another cluster's keys, TLS files in pairs."""
    f = ctx.flat
    endpoints = f["cluster.etcd.endpoints"]
    expected = "http://host:port or https://host:port"
    if not endpoints:
        ctx.error(
            "cluster.etcd.endpoints",
            E.CFG_DEPENDENCY,
            "cluster is enabled but no etcd endpoint is set",
            expected,
            solution="list the client URLs of your etcd cluster, e.g. http://10.0.0.5:2379",
        )
    for i, url in enumerate(endpoints):
        scheme, sep, rest = url.partition("://")
        if scheme not in ("http", "https") or not sep or _check_addr_quiet(rest) is None:
            ctx.error(
                f"cluster.etcd.endpoints[{i}]", E.CFG_TYPE, "not an etcd client URL", expected
            )
    prefix = f["cluster.etcd.prefix"]
    if not (prefix.startswith("/") and prefix.endswith("/") and len(prefix) > 1):
        # Without the closing slash "/tokmesh" would also match "/tokmesh-staging/...".
        ctx.error(
            "cluster.etcd.prefix", E.CFG_TYPE, "prefix must start and end with /", "/tokmesh/"
        )
    if bool(f["cluster.etcd.tls.cert_file"]) != bool(f["cluster.etcd.tls.key_file"]):
        ctx.error(
            "cluster.etcd.tls.key_file",
            E.CFG_DEPENDENCY,
            "cluster.etcd.tls.cert_file and key_file go together",
            "both set, or neither",
        )
    for key in (
        "cluster.etcd.tls.ca_file",
        "cluster.etcd.tls.cert_file",
        "cluster.etcd.tls.key_file",
    ):
        if f[key]:
            _check_readable_file(ctx, key)
    if bool(f["cluster.etcd.username"]) != bool(f["cluster.etcd.password"]):
        ctx.error(
            "cluster.etcd.password",
            E.CFG_DEPENDENCY,
            "cluster.etcd.username and password go together",
            "both set, or neither",
            show_value=False,
        )


# ============================================================================ files


def _check_readable_file(ctx: _Ctx, key: str) -> bytes | None:
    path = ctx.flat[key]
    try:
        st = os.stat(path)
    except FileNotFoundError:
        ctx.error(key, E.CFG_FILE_MISSING, "file does not exist", "an existing PEM file")
        return None
    except PermissionError:
        ctx.error(
            key, E.CFG_PERMISSION, "file cannot be reached (permission denied)", "a readable file"
        )
        return None
    except OSError:
        ctx.error(key, E.CFG_FILE_MISSING, "file does not exist", "an existing PEM file")
        return None
    if not stat.S_ISREG(st.st_mode):
        ctx.error(key, E.CFG_BAD_PEM, "not a regular file", "a PEM file")
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except PermissionError:
        ctx.error(
            key, E.CFG_PERMISSION, "file is not readable", "a file readable by the server user"
        )
    except OSError:
        ctx.error(
            key, E.CFG_PERMISSION, "file cannot be read", "a file readable by the server user"
        )
    return None


def _load_certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def _check_tls(ctx: _Ctx, prefix: str, ca_required: bool) -> None:
    cert_key, key_key, ca_key = prefix + "cert_file", prefix + "key_file", prefix + "client_ca_file"
    owner = prefix.removesuffix("tls.").rstrip(".")
    required = [cert_key, key_key] + ([ca_key] if ca_required else [])
    for key in required:
        if not ctx.flat[key]:
            ctx.error(key, E.CFG_DEPENDENCY, f"{owner} is enabled but {key} is not set")
    cert = None
    if ctx.flat[cert_key]:
        data = _check_readable_file(ctx, cert_key)
        if data is not None:
            try:
                cert = _load_certs(data)[0]
            except Exception:
                ctx.error(
                    cert_key, E.CFG_BAD_PEM, "not a valid PEM certificate", "a PEM certificate"
                )
    private_key = None
    if ctx.flat[key_key]:
        data = _check_readable_file(ctx, key_key)
        if data is not None:
            try:
                private_key = serialization.load_pem_private_key(data, password=None)
            except TypeError:
                ctx.error(
                    key_key, E.CFG_BAD_PEM, "private key is encrypted", "an unencrypted PEM key"
                )
            except Exception:
                # Never echo the parser's message: it could quote key material.
                ctx.error(
                    key_key, E.CFG_BAD_PEM, "not a valid PEM private key", "a PEM private key"
                )
    if cert is not None and private_key is not None:
        fmt = serialization.PublicFormat.SubjectPublicKeyInfo
        enc = serialization.Encoding.DER
        if cert.public_key().public_bytes(enc, fmt) != private_key.public_key().public_bytes(
            enc, fmt
        ):
            ctx.error(
                key_key,
                E.CFG_BAD_PEM,
                f"private key does not match {cert_key}",
                "the key pair of the certificate",
            )
    if cert is not None:
        not_after = cert.not_valid_after_utc
        if not_after <= ctx.now:
            ctx.warnings.append(f"certificate {cert_key} expired on {not_after.isoformat()}")
        elif not_after - ctx.now <= dt.timedelta(days=CERT_WARN_DAYS):
            ctx.warnings.append(
                f"certificate {cert_key} expires on {not_after.isoformat()} "
                f"(within {CERT_WARN_DAYS} days)"
            )
    if ctx.flat[ca_key]:
        data = _check_readable_file(ctx, ca_key)
        if data is not None:
            try:
                _load_certs(data)
            except Exception:
                ctx.error(ca_key, E.CFG_BAD_PEM, "not a valid PEM CA bundle", "PEM certificates")


def _check_ciphers(ctx: _Ctx) -> None:
    """``security.tls.ciphers`` must be an OpenSSL cipher list that leaves at least one
    suite below TLS 1.3 (with none, every TLS 1.2 client would fail its handshake) and no
    suite that does not encrypt (``eNULL``) or does not authenticate the server
    (``aNULL``): a listener must never be talked into plaintext or an unauthenticated peer.
    """
    key = "security.tls.ciphers"
    expected = "an OpenSSL cipher list of encrypting, authenticated suites"
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.set_ciphers(ctx.flat[key])
    except ssl.SSLError:
        ctx.error(key, E.CFG_TYPE, "OpenSSL selects no cipher from it", expected)
        return
    tls12 = [c for c in probe.get_ciphers() if c["protocol"] != "TLSv1.3"]
    weak = [c["name"] for c in tls12 if c["symmetric"] is None or c["auth"] == "auth-null"]
    if not tls12:
        ctx.error(key, E.CFG_TYPE, "it selects no TLS 1.2 cipher suite", expected)
    elif weak:
        ctx.error(
            key,
            E.CFG_TYPE,
            f"it selects suites without encryption or authentication: {', '.join(weak[:3])}",
            expected,
        )


def _nearest_existing(path: Path) -> Path:
    cur = path
    while not cur.exists() and cur != cur.parent:
        cur = cur.parent
    return cur


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` where every directory created gets mode 0750 (05 §3.5)."""
    missing: list[Path] = []
    cur = path
    while not cur.exists():
        missing.append(cur)
        cur = cur.parent
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o750)
            os.chmod(p, 0o750)


def _check_dir(ctx: _Ctx, key: str) -> None:
    value = ctx.flat[key]
    if not value:
        ctx.error(key, E.CFG_TYPE, "directory path is empty", "a directory path")
        return
    path = Path(value)
    try:
        exists = path.exists()
        ancestor = path if exists else _nearest_existing(path)
    except OSError as exc:
        # A name longer than the file system allows, a loop of symlinks...
        ctx.error(key, E.CFG_TYPE, f"unusable path: {exc.strerror or 'error'}", "a directory path")
        return
    if exists:
        if not path.is_dir():
            ctx.error(key, E.CFG_TYPE, "not a directory", "a directory")
            return
    else:
        if not ancestor.is_dir():
            ctx.error(
                key,
                E.CFG_FILE_MISSING,
                f"cannot be created: {ancestor} is not a directory",
                "an existing or creatable directory",
            )
            return
        if not ctx.create_dirs:
            if not os.access(ancestor, os.W_OK | os.X_OK):
                ctx.error(
                    key,
                    E.CFG_FILE_MISSING,
                    f"cannot be created: {ancestor} is not writable",
                    "an existing or creatable directory",
                )
            return
        try:
            _make_dirs(path)
        except OSError as exc:
            ctx.error(
                key,
                E.CFG_FILE_MISSING,
                f"cannot be created: {exc.strerror or 'error'}",
                "an existing or creatable directory",
            )
            return
    if not ctx.create_dirs:
        if not os.access(path, os.W_OK | os.X_OK):
            ctx.error(key, E.CFG_PERMISSION, "directory is not writable", "a writable directory")
        return
    try:
        probe_write(path)
    except OSError as exc:
        if out_of_space(exc):
            # A full disk is not a configuration error: the node starts, recovers and
            # serves reads, and the storage engine refuses writes until it has space.
            ctx.warnings.append(
                f"{key}: {path} is full ({exc.strerror}): the node serves reads only and "
                "answers writes with TM-SYS-5001 until it is restarted with free space"
            )
            return
        ctx.error(
            key,
            E.CFG_PERMISSION,
            f"directory is not writable: {exc.strerror or exc}",
            "a writable directory",
        )


# ============================================================================ warnings


def _startup_warnings(ctx: _Ctx) -> None:
    f = ctx.flat
    for key, flag in _LISTENERS:
        if not ctx.on(flag):
            continue
        hp = _check_addr_quiet(f[key])
        if hp is None:
            continue
        host = hp[0]
        if key == "cluster.listen_address":
            if _is_loopback(host):
                ctx.warnings.append(
                    "cluster.listen_address is a loopback address while the cluster is "
                    "enabled: peers on other hosts cannot reach it"
                )
            continue
        if not _is_loopback(host):
            ctx.warnings.append(
                f"{key} {f[key]} is explicitly exposed beyond loopback; protect it with a "
                "firewall, TLS and API keys"
            )
        if ctx.resolve_hosts and host and not _is_ip(host):
            _warn_unresolvable(ctx, key, host)
    if ctx.on("cluster.enabled") and ctx.resolve_hosts:
        for key in ("cluster.advertise_address",):
            hp = _check_addr_quiet(f[key])
            if hp and hp[0] and not _is_ip(hp[0]):
                _warn_unresolvable(ctx, key, hp[0])
        for i, seed in enumerate(f["cluster.discovery.seeds"]):
            hp = _check_addr_quiet(seed)
            if hp and hp[0] and not _is_ip(hp[0]):
                _warn_unresolvable(ctx, f"cluster.discovery.seeds[{i}]", hp[0])
    if not f["server.https.enabled"]:
        ctx.warnings.append(HTTPS_DISABLED_WARNING)
    if f["server.redis.enabled"]:
        ctx.warnings.append(
            "plaintext Redis protocol listener is enabled (server.redis.enabled): dev only, "
            "use server.redis_tls in production"
        )
    if f["security.anti_replay.nonce_ttl"] < 2 * f["security.anti_replay.timestamp_window"]:
        ctx.warnings.append(
            "security.anti_replay.nonce_ttl is shorter than 2 x timestamp_window: a replay "
            "inside the window may not be detected"
        )
    if f["telemetry.logging.dump_config"]:
        ctx.warnings.append(
            "telemetry.logging.dump_config is true: the full sanitized configuration is logged"
        )
    cap_warning = above_limit_warning(f["server.max_connections"], descriptor_limit())
    if cap_warning is not None:
        ctx.warnings.append(cap_warning)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _warn_unresolvable(ctx: _Ctx, key: str, host: str) -> None:
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        ctx.warnings.append(f"{key}: host {host} does not resolve")


# ============================================================================ entry points


def validate_config(
    cfg: Config,
    *,
    origins: Mapping[str, str] | None = None,
    file_label: str = "config.yaml",
    create_dirs: bool = False,
    now: dt.datetime | None = None,
    resolve_hosts: bool = False,
) -> ValidationReport:
    """Validate a loaded config, collecting every error and the startup warnings.

    ``origins`` (from :class:`LoadResult`) hides values that came from the environment;
    ``create_dirs`` is true only for a real start; ``now`` fixes the certificate-expiry
    clock (tests); ``resolve_hosts`` enables the DNS WARN for non-IP hosts.
    """
    ctx = _Ctx(
        cfg,
        origins or {},
        file_label,
        create_dirs,
        now or dt.datetime.now(dt.UTC),
        resolve_hosts,
    )
    for spec in KEYS.values():
        if not _gated_off(ctx, spec):
            _check_key(ctx, spec)
    _check_cross(ctx)
    _check_ports(ctx)
    for flag, prefix, ca_required in _TLS_OWNERS:
        if ctx.on(flag):
            _check_tls(ctx, prefix, ca_required)
    _check_ciphers(ctx)
    if ctx.on("cluster.enabled"):
        _check_etcd(ctx)
    _check_dir(ctx, "storage.wal.dir")
    _check_dir(ctx, "storage.snapshot.dir")
    _startup_warnings(ctx)
    return ValidationReport(errors=ctx.errors, warnings=ctx.warnings)


def validate(cfg: Config, *, create_dirs: bool = False) -> list[ConfigIssue]:
    """All validation errors of ``cfg`` (empty list = valid). See :func:`validate_config`."""
    return validate_config(cfg, create_dirs=create_dirs).errors


def load_and_validate(
    config_path: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, str],
    cwd: Path,
    **kwargs: Any,
) -> tuple[LoadResult, ValidationReport]:
    """Load (05 §2) then validate (05 §4); the report holds load errors first.

    Keyword arguments go to :func:`~tokmesh.config.loader.load_config` (``search_paths``)
    or :func:`validate_config` (``create_dirs``, ``now``, ``resolve_hosts``).
    """
    search_paths = kwargs.pop("search_paths", None)
    result = load_config(config_path, env, flags, cwd, search_paths=search_paths)
    report = validate_config(
        result.config,
        origins=result.origins,
        file_label=result.source.file or "config.yaml",
        **kwargs,
    )
    return result, ValidationReport(
        errors=[*result.errors, *report.errors], warnings=[*result.warnings, *report.warnings]
    )


def validate_yaml_text(text: str, *, base_dir: Path) -> ValidationReport:
    """Validate YAML text as a main config file (``POST /admin/v1/config/validate``).

    No directory is created; env and flags are not applied. YAML, type and validation
    errors are all in ``errors``; unknown keys are in ``warnings``.
    """
    result = load_yaml_text(text, base_dir=base_dir)
    report = validate_config(result.config, origins=result.origins)
    return ValidationReport(
        errors=[*result.errors, *report.errors], warnings=[*result.warnings, *report.warnings]
    )
