"""The one configuration schema of ``tokmesh-server`` (spec 05 §3 plus rulings R1, R2, R13).

The schema is a tree of frozen ``attrs`` classes, one per section, so code reads
``cfg.server.http.address`` or ``cfg.storage.wal.sync_mode``. Every leaf carries its
metadata (type, default as written in a file, range, hot-reload flag, description), and
:data:`KEYS` is the flat registry built from the tree: dotted name -> :class:`KeySpec`.
That one registry drives the loader (environment lookup table, 05 §2.4, D18), unknown-key
detection, range validation, the sanitized dump and the documentation test.

Canonical value types: durations are ``float`` seconds, sizes ``int`` bytes, rates ``int``
bits per second, lists are tuples of strings, addresses stay ``"host:port"`` strings
(split them with :func:`tokmesh.config.types.parse_addr`), paths are strings (absolute
after loading, or ``""``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

from tokmesh.config.types import (
    format_duration,
    format_rate,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
)

__all__ = [
    "ENV_TO_KEY",
    "FLAG_KEYS",
    "KEYS",
    "PATH_KEYS",
    "SECTIONS",
    "Config",
    "KeySpec",
    "Kind",
    "build_config",
    "changed_keys",
    "config_to_flat",
    "default_config",
    "env_name",
    "format_value",
]


class Kind(enum.Enum):
    """The value type of a configuration key (05 §2.6)."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STR = "string"
    ENUM = "enum"
    PATH = "path"
    SECRET = "secret"
    URL = "url"
    ADDR = "addr"
    DURATION = "duration"
    SIZE = "size"
    RATE = "rate"
    STR_LIST = "list[string]"
    ADDR_LIST = "list[addr]"


_META = "tokmesh"


@attrs.frozen
class _Leaf:
    """Metadata attached to one schema leaf (internal; exposed through :class:`KeySpec`)."""

    kind: Kind
    default_text: str
    doc: str
    hot: bool
    minimum: Any
    maximum: Any
    range_text: str
    choices: tuple[str, ...]
    gate: str | None
    addition: bool
    no_effect: bool
    example: str | None


def _to_canonical(kind: Kind, text: Any) -> Any:
    """Convert a default or bound written in file form into its canonical value."""
    if kind is Kind.DURATION:
        return parse_duration(text)
    if kind is Kind.SIZE:
        return parse_size(text)
    if kind is Kind.RATE:
        return parse_rate(text)
    if kind in (Kind.STR_LIST, Kind.ADDR_LIST):
        return tuple(text)
    return text


def _key(
    default: Any,
    kind: Kind,
    doc: str,
    *,
    hot: bool = False,
    minimum: Any = None,
    maximum: Any = None,
    range_text: str | None = None,
    choices: tuple[str, ...] = (),
    gate: str | None = None,
    addition: bool = False,
    no_effect: bool = False,
    example: str | None = None,
) -> Any:
    """Declare one schema leaf. Defaults and bounds are written in file form ("2h", "1MB").

    Returns ``Any`` so that mypy's attrs plugin treats the attribute as having a default.
    """
    lo = _to_canonical(kind, minimum) if minimum is not None else None
    hi = _to_canonical(kind, maximum) if maximum is not None else None
    if range_text is None:
        if choices:
            range_text = " | ".join(choices)
        elif minimum is not None and maximum is not None:
            range_text = f"{minimum} - {maximum}"
        elif minimum is not None:
            range_text = f">= {minimum}"
        elif maximum is not None:
            range_text = f"<= {maximum}"
        else:
            range_text = ""
    if isinstance(default, list):
        default_text = "[]" if not default else ", ".join(default)
    elif isinstance(default, bool):
        default_text = "true" if default else "false"
    elif isinstance(default, str) and kind not in (Kind.DURATION, Kind.SIZE, Kind.RATE):
        default_text = f'"{default}"' if default == "" else default
    else:
        default_text = str(default)
    meta = _Leaf(
        kind=kind,
        default_text=default_text,
        doc=doc,
        hot=hot,
        minimum=lo,
        maximum=hi,
        range_text=range_text,
        choices=choices,
        gate=gate,
        addition=addition,
        no_effect=no_effect,
        example=example,
    )
    return attrs.field(default=_to_canonical(kind, default), metadata={_META: meta})


# ============================================================================ server.*


@attrs.frozen
class TlsConfig:
    """PEM certificate material of one TLS listener (hot-reloadable, 05 §5)."""

    cert_file: str = _key(
        "",
        Kind.PATH,
        "PEM certificate (or chain) presented by this listener. Required when the owner is "
        "enabled (1006); must exist (1003), be readable (1004), be PEM and match key_file "
        "(1007).",
        hot=True,
        example="/etc/tokmesh-server/certs/server.crt",
    )
    key_file: str = _key(
        "",
        Kind.PATH,
        "PEM private key (unencrypted) matching cert_file. The path is shown in dumps, the "
        "content never.",
        hot=True,
        example="/etc/tokmesh-server/certs/server.key",
    )
    client_ca_file: str = _key(
        "",
        Kind.PATH,
        "PEM CA bundle. When set, clients must present a certificate signed by it (mTLS); "
        "must exist if set.",
        hot=True,
        example="/etc/tokmesh-server/certs/ca.crt",
    )


@attrs.frozen
class UiConfig:
    """``server.http.ui.*``: the operations dashboard served at ``/ui``."""

    enabled: bool = _key(
        True,
        Kind.BOOL,
        "Serve the operations dashboard (static files) at `/ui` on the HTTP and HTTPS "
        "listeners. It holds no secret and calls the same admin and business API as any "
        "client. TokMesh addition.",
        addition=True,
    )


@attrs.frozen
class HttpConfig:
    """Plaintext HTTP listener (business API, admin API, /metrics, /health, /ready)."""

    enabled: bool = _key(True, Kind.BOOL, "Serve plaintext HTTP. Never expose it publicly.")
    address: str = _key(
        "127.0.0.1:5080",
        Kind.ADDR,
        "Listen address of the HTTP listener; a non-loopback host logs an exposure WARN.",
        gate="server.http.enabled",
    )
    max_body_size: int = _key(
        "100MB",
        Kind.SIZE,
        "Request-body limit on HTTP and HTTPS (restore uploads included).",
        minimum="1MB",
        maximum="1GB",
    )
    engine: str = _key(
        "native",
        Kind.ENUM,
        "HTTP front end: `native` (TokMesh's own httptools server, fast hot path) or "
        "`hypercorn` (Hypercorn serving the whole app, HTTP/2 capable). TokMesh addition.",
        choices=("native", "hypercorn"),
        addition=True,
    )
    header_timeout: float = _key(
        "10s",
        Kind.DURATION,
        "Time a client has to send a request head, on HTTP and HTTPS: a new connection "
        "that sends nothing this long is closed, and a started head must be complete this "
        "long after its first byte (else 408). Keep-alive waits between requests stay "
        "75 s. Native engine only (Hypercorn closes silent connections after its own 5 s). "
        "TokMesh addition.",
        minimum="1s",
        maximum="300s",
        addition=True,
    )
    ui: UiConfig = attrs.field(factory=UiConfig)


@attrs.frozen
class HttpsConfig:
    """TLS HTTP listener, same routes as HTTP."""

    enabled: bool = _key(
        False,
        Kind.BOOL,
        "Serve HTTPS. While off, a startup WARN says so. Enable once certificates exist.",
    )
    address: str = _key("127.0.0.1:5443", Kind.ADDR, "Listen address of the HTTPS listener.")
    tls: TlsConfig = attrs.field(factory=TlsConfig)


@attrs.frozen
class RedisConfig:
    """Plaintext RESP listener (development only)."""

    enabled: bool = _key(
        False, Kind.BOOL, "Serve the Redis protocol (RESP) in plaintext; dev only, WARN when on."
    )
    address: str = _key(
        "127.0.0.1:6379", Kind.ADDR, "Listen address of the plaintext RESP listener."
    )
    login_timeout: float = _key(
        "10s",
        Kind.DURATION,
        "On the plaintext and the TLS RESP listener: a connection that has not "
        "authenticated (AUTH, or HELLO with AUTH) this long after it opened is closed. "
        "Once authenticated, idle clients are kept as Redis keeps them. TokMesh addition.",
        minimum="1s",
        maximum="300s",
        addition=True,
    )


@attrs.frozen
class RedisTlsConfig:
    """RESP over TLS."""

    enabled: bool = _key(False, Kind.BOOL, "Serve the Redis protocol over TLS.")
    address: str = _key(
        "127.0.0.1:6380", Kind.ADDR, "Listen address of the RESP-over-TLS listener."
    )
    tls: TlsConfig = attrs.field(factory=TlsConfig)


@attrs.frozen
class ShutdownConfig:
    """Graceful shutdown budget of the server (05 §15)."""

    timeout: float = _key(
        "30s",
        Kind.DURATION,
        "Hard deadline of a graceful shutdown (plus cluster.shutdown.timeout when the "
        "cluster is on).",
        minimum="5s",
        maximum="300s",
    )
    grace_period: float = _key(
        "5s",
        Kind.DURATION,
        "Time in-flight requests get to finish after new ones stop being accepted.",
        minimum="0s",
        range_text="0s - server.shutdown.timeout",
    )


@attrs.frozen
class LocalConfig:
    """Local emergency admin channel (Unix socket)."""

    socket_path: str = _key(
        "/var/run/tokmesh-server/tokmesh-server.sock",
        Kind.PATH,
        "Unix socket of the emergency admin channel (no API key, mode 0660, never over "
        "TCP). If it cannot be bound (e.g. no root for /var/run): WARN and the socket goes "
        'to <data dir>/tokmesh-server.sock, where `tokmesh-cli -t local` also looks; "" '
        "turns it off.",
    )


@attrs.frozen
class ServerConfig:
    """``server.*``: listeners and process lifetime."""

    max_connections: int = _key(
        0,
        Kind.INT,
        "Cap on open TCP connections across the HTTP, HTTPS and RESP listeners; beyond it "
        "a new connection is answered at once (HTTP 503, RESP `-ERR max number of clients "
        "reached`, TLS: closed) and closed. 0 = the descriptor limit (RLIMIT_NOFILE) at "
        "start minus 64 for files, WAL segments, snapshots and the local admin socket (at "
        "least 16). A value above that limit WARNs at start. TokMesh addition.",
        minimum=0,
        maximum=1_000_000,
        addition=True,
    )
    http: HttpConfig = attrs.field(factory=HttpConfig)
    https: HttpsConfig = attrs.field(factory=HttpsConfig)
    redis: RedisConfig = attrs.field(factory=RedisConfig)
    redis_tls: RedisTlsConfig = attrs.field(factory=RedisTlsConfig)
    shutdown: ShutdownConfig = attrs.field(factory=ShutdownConfig)
    local: LocalConfig = attrs.field(factory=LocalConfig)


# ============================================================================ cluster.*


@attrs.frozen
class DiscoveryConfig:
    """How a node finds its peers."""

    seeds: tuple[str, ...] = _key(
        [],
        Kind.ADDR_LIST,
        "Seed node addresses. Setting seeds while cluster.enabled is false is an error "
        "(1006). With etcd as the control plane the seeds are not needed: they are "
        "accepted and ignored (an INFO line says so).",
    )


@attrs.frozen
class BootstrapConfig:
    """Bootstrap of a new cluster."""

    expect_nodes: int = _key(
        1, Kind.INT, "Nodes expected when bootstrapping a new cluster.", minimum=1
    )


@attrs.frozen
class ClusterDataConfig:
    """Data placement."""

    replication_factor: int = _key(
        1,
        Kind.INT,
        "Copies of each shard; capped at the live node count at runtime with a WARN.",
        minimum=1,
    )


@attrs.frozen
class ReplicationConfig:
    """``cluster.replication.*``: when a write waits for a replica. TokMesh addition."""

    ack: str = _key(
        "revoke",
        Kind.ENUM,
        "With replication_factor >= 2: `revoke` answers a revocation only once a replica "
        "has written it (a failover never revives a revoked session) while creates, "
        "renews and touches reach replicas asynchronously (a failover may lose the last "
        "moments of them); `replica` makes every write wait for a replica. TokMesh "
        "addition.",
        choices=("revoke", "replica"),
        addition=True,
    )


@attrs.frozen
class RaftConfig:
    """Control-plane log knobs (kept for compatibility; the control plane is etcd, R9)."""

    snapshot_threshold: int = _key(
        10000, Kind.INT, "Control-plane entries between compactions.", minimum=1000
    )
    trailing_logs: int = _key(
        1000, Kind.INT, "Control-plane entries kept after a compaction.", minimum=100
    )


@attrs.frozen
class RebalanceConfig:
    """Shard migration limits."""

    max_rate: int = _key(
        "20Mbps",
        Kind.RATE,
        "Bandwidth cap of shard migration; unit required (Kbps/Mbps/Gbps or KBps/MBps/GBps).",
        minimum="1Kbps",
        maximum="10Gbps",
    )
    min_ttl: float = _key(
        "60s",
        Kind.DURATION,
        "Sessions with less remaining TTL are not migrated.",
        minimum="0s",
        maximum="24h",
    )


@attrs.frozen
class ClusterShutdownConfig:
    """Graceful leave of a cluster node."""

    timeout: float = _key(
        "60s",
        Kind.DURATION,
        "Migration budget during a graceful leave.",
        minimum="10s",
        maximum="300s",
    )
    force_leave: bool = _key(
        False, Kind.BOOL, "Force the leave when the migration budget runs out."
    )


@attrs.frozen
class EtcdTlsConfig:
    """TLS towards etcd's client port (all empty = plain HTTP, for a loopback etcd)."""

    ca_file: str = _key(
        "", Kind.PATH, "PEM CA that signs etcd's server certificate (https endpoints)."
    )
    cert_file: str = _key(
        "", Kind.PATH, "PEM client certificate, when etcd requires client certificates."
    )
    key_file: str = _key("", Kind.PATH, "PEM private key of cluster.etcd.tls.cert_file.")


@attrs.frozen
class EtcdConfig:
    """The control plane: an etcd v3 cluster, spoken to over its HTTP/JSON gateway."""

    endpoints: tuple[str, ...] = _key(
        [],
        Kind.STR_LIST,
        "etcd client URLs (http://host:port or https://host:port). Required when the cluster "
        "is on (1006); a node fails over between them.",
        example="http://10.0.0.5:2379,http://10.0.0.6:2379,http://10.0.0.7:2379",
    )
    prefix: str = _key(
        "/tokmesh/",
        Kind.STR,
        "Key prefix of this cluster's records in etcd (one etcd can hold several clusters).",
    )
    username: str = _key("", Kind.STR, "etcd user, when etcd authentication is on.")
    password: str = _key("", Kind.SECRET, "Password of cluster.etcd.username.")
    lease_ttl: float = _key(
        "5s",
        Kind.DURATION,
        "TTL of this node's membership lease (kept alive every third of it): a node whose "
        "lease expires is dead for the cluster and its shards fail over to a replica; a "
        "node that could not renew it within this time stops serving its shards (it "
        "fences itself). Failover takes about this long plus a second.",
        minimum="2s",
        maximum="60s",
    )
    request_timeout: float = _key(
        "5s",
        Kind.DURATION,
        "Deadline of one etcd request (a watch is kept open longer).",
        minimum="100ms",
        maximum="60s",
    )
    tls: EtcdTlsConfig = attrs.field(factory=EtcdTlsConfig)


@attrs.frozen
class ClusterConfig:
    """``cluster.*``: ranges are checked only when ``cluster.enabled`` is true."""

    enabled: bool = _key(
        False, Kind.BOOL, "Run as a cluster member. Must be set explicitly; seeds never imply it."
    )
    node_id: str = _key(
        "",
        Kind.STR,
        'Node identity. "" = read <parent of storage.wal.dir>/node-id, else generate '
        "`tmnd-` + lowercase ULID once and persist it there (ruling R1).",
    )
    listen_address: str = _key(
        "127.0.0.1:5343",
        Kind.ADDR,
        "Cluster-internal listener (RPC, gossip); a loopback host while enabled logs a WARN.",
    )
    advertise_address: str = _key(
        "",
        Kind.ADDR,
        "Address peers use to reach this node. Required (1006), no wildcard host (1002).",
        example="10.0.0.10:5343",
    )
    tls: TlsConfig = attrs.field(factory=TlsConfig)
    etcd: EtcdConfig = attrs.field(factory=EtcdConfig)
    discovery: DiscoveryConfig = attrs.field(factory=DiscoveryConfig)
    bootstrap: BootstrapConfig = attrs.field(factory=BootstrapConfig)
    data: ClusterDataConfig = attrs.field(factory=ClusterDataConfig)
    replication: ReplicationConfig = attrs.field(factory=ReplicationConfig)
    raft: RaftConfig = attrs.field(factory=RaftConfig)
    rebalance: RebalanceConfig = attrs.field(factory=RebalanceConfig)
    shutdown: ClusterShutdownConfig = attrs.field(factory=ClusterShutdownConfig)


# ============================================================================ session.*


@attrs.frozen
class TtlConfig:
    """Session lifetime and expiry sweeping."""

    default: float = _key(
        "2h",
        Kind.DURATION,
        "TTL of a session created without ttl_seconds.",
        minimum="1m",
        range_text="1m - session.ttl.max",
    )
    max: float = _key(
        "720h",
        Kind.DURATION,
        "Upper bound of any requested TTL.",
        maximum="8760h",
        range_text="session.ttl.default - 8760h",
    )
    gc_interval: float = _key(
        "100ms", Kind.DURATION, "Expiry sweeper tick.", minimum="100ms", maximum="1m"
    )
    sample_size: int = _key(
        20, Kind.INT, "Sessions sampled per sweep round.", minimum=1, maximum=10000
    )


@attrs.frozen
class QuotaConfig:
    """Per-user session quota."""

    max_per_user: int = _key(50, Kind.INT, "Live sessions per user_id.", minimum=1, maximum=10000)


@attrs.frozen
class SessionConfig:
    """``session.*``."""

    ttl: TtlConfig = attrs.field(factory=TtlConfig)
    quota: QuotaConfig = attrs.field(factory=QuotaConfig)
    quota_policy: str = _key(
        "refuse",
        Kind.ENUM,
        "What happens at the per-user quota: `refuse` (TM-SESS-4002) or `evict_oldest` "
        "(revoke the user's oldest session). TokMesh addition.",
        choices=("refuse", "evict_oldest"),
        addition=True,
    )
    touch_min_interval: float = _key(
        "0s",
        Kind.DURATION,
        "A touch sooner than this after the last one is skipped (cuts write "
        "amplification); 0s = every touch is written. TokMesh addition.",
        minimum="0s",
        maximum="24h",
        addition=True,
    )


# ============================================================================ security.*


@attrs.frozen
class Argon2Config:
    """Argon2id parameters for API-key secrets."""

    memory: int = _key(
        16384,
        Kind.INT,
        "Memory cost in KB (suggested 16384-65536).",
        minimum=8192,
        maximum=1048576,
    )
    iterations: int = _key(2, Kind.INT, "Time cost (passes).", minimum=1, maximum=10)
    parallelism: int = _key(2, Kind.INT, "Lanes.", minimum=1, maximum=16)


@attrs.frozen
class AuthConfig:
    """API-key authentication."""

    allow_list: tuple[str, ...] = _key(
        [],
        Kind.STR_LIST,
        "Global client IP allow-list; each entry an IPv4/IPv6 address or CIDR (error path "
        "security.auth.allow_list[i], 1001). [] = no restriction.",
        range_text="IP or CIDR entries",
    )
    rotation_grace: float = _key(
        "1h",
        Kind.DURATION,
        "How long the old secret keeps working after a key rotation.",
        minimum="0s",
        maximum="24h",
    )
    cache_capacity: int = _key(
        10000, Kind.INT, "Entries of the key-validation cache.", minimum=1000, maximum=100000
    )
    cache_ttl: float = _key(
        "60s", Kind.DURATION, "Lifetime of a validation-cache entry.", minimum="10s", maximum="5m"
    )
    argon2: Argon2Config = attrs.field(factory=Argon2Config)


@attrs.frozen
class AntiReplayConfig:
    """X-Timestamp / X-Nonce replay protection (02 §11, R2)."""

    timestamp_window: float = _key(
        "30s",
        Kind.DURATION,
        "Accepted clock skew of X-Timestamp.",
        minimum="1s",
        maximum="5m",
    )
    nonce_ttl: float = _key(
        "60s",
        Kind.DURATION,
        "How long a nonce stays consumed; a value below 2 x timestamp_window logs a WARN.",
        minimum="1s",
        maximum="10m",
    )
    nonce_cache_size: int = _key(
        100000, Kind.INT, "Capacity of the nonce store.", minimum=1000, maximum=1000000
    )
    required: bool = _key(
        False,
        Kind.BOOL,
        "Make X-Timestamp and X-Nonce mandatory on every authenticated POST (ruling R2). "
        "When false they are checked whenever a POST carries either header. TokMesh addition.",
        addition=True,
    )


@attrs.frozen
class SecurityStorageConfig:
    """Encryption at rest."""

    wal_encryption_key: str = _key(
        "",
        Kind.SECRET,
        'At-rest key, exactly 64 hex chars (1001). "" = generate once and keep it in '
        "<storage.wal.dir>/.encryption_key (0600). Always redacted; losing it loses the data.",
        range_text='"" or 64 hex characters',
    )


@attrs.frozen
class NetworkConfig:
    """Client-IP trust boundary."""

    trusted_proxies: tuple[str, ...] = _key(
        [],
        Kind.STR_LIST,
        "Proxies whose Forwarded / X-Forwarded-For / X-Real-IP headers are honoured; each "
        "entry an IP or CIDR (1001). [] = trust no proxy header.",
        range_text="IP or CIDR entries",
    )


#: TLS 1.2 suites a listener offers unless ``security.tls.ciphers`` says otherwise: AEAD
#: only (no CBC, whose padding and MAC-then-encrypt design keeps producing oracles) and
#: ephemeral key exchange only (forward secrecy). TLS 1.3 suites are all AEAD already.
DEFAULT_TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


@attrs.frozen
class TlsPolicyConfig:
    """What every TLS listener negotiates."""

    ciphers: str = _key(
        DEFAULT_TLS12_CIPHERS,
        Kind.STR,
        "OpenSSL cipher list for TLS 1.2 on every TLS listener (TLS 1.3 suites are "
        "OpenSSL's own, all AEAD). The default allows only AEAD suites with forward "
        "secrecy: no CBC, no static RSA key exchange. Must select at least one TLS 1.2 "
        "suite (1001).",
        addition=True,
    )


@attrs.frozen
class SecurityConfig:
    """``security.*``."""

    auth: AuthConfig = attrs.field(factory=AuthConfig)
    anti_replay: AntiReplayConfig = attrs.field(factory=AntiReplayConfig)
    storage: SecurityStorageConfig = attrs.field(factory=SecurityStorageConfig)
    network: NetworkConfig = attrs.field(factory=NetworkConfig)
    tls: TlsPolicyConfig = attrs.field(factory=TlsPolicyConfig)


# ============================================================================ storage.*


@attrs.frozen
class WalConfig:
    """Write-ahead log."""

    dir: str = _key(
        "./data/wal",
        Kind.PATH,
        "WAL directory; relative paths resolve against the config file's directory (else "
        "the working directory). Must exist or be creatable (mode 0750) and writable: cannot "
        "create 1003, not writable 1004 (naming the cause), not a directory 1001. A full disk "
        "is only a WARN: the node starts read-only (writes TM-SYS-5001, /ready 503).",
    )
    sync_mode: str = _key(
        "batch",
        Kind.ENUM,
        "`sync`: fsync before every acknowledgement (group commit); `batch`: fsync every "
        "sync_interval.",
        choices=("sync", "batch"),
    )
    sync_interval: float = _key(
        "1s",
        Kind.DURATION,
        "fsync period in batch mode (checked only in batch mode).",
        minimum="1ms",
        maximum="10s",
    )
    batch_count: int = _key(100, Kind.INT, "Records per write batch.", minimum=1, maximum=100000)
    batch_size: int = _key(
        "1MB", Kind.SIZE, "Bytes per write batch.", minimum="4KB", maximum="64MB"
    )


@attrs.frozen
class SnapshotConfig:
    """Snapshots."""

    dir: str = _key(
        "./data/snapshots", Kind.PATH, "Snapshot directory; same rules as storage.wal.dir."
    )
    interval: float = _key(
        "1h", Kind.DURATION, "Periodic snapshot trigger.", minimum="1h", maximum="168h"
    )
    threshold: int = _key(
        "100MB",
        Kind.SIZE,
        "WAL written since the newest snapshot that triggers a new one (whichever of this "
        "and interval comes first). It bounds what a restart after a crash replays: 100MB "
        "is decoded on a second core while a million-session snapshot loads "
        "(docs/performance.md).",
        minimum="100MB",
        maximum="10GB",
    )
    retention_count: int = _key(5, Kind.INT, "Keep the newest N snapshots.", minimum=1, maximum=100)
    retention_days: int = _key(
        7,
        Kind.INT,
        "Keep snapshots younger than N days (union with retention_count).",
        minimum=1,
        maximum=365,
    )


@attrs.frozen
class BadgerConfig:
    """Compatibility keys of the Go build: accepted and validated, no effect (R13)."""

    gc_interval: float = _key(
        "5m",
        Kind.DURATION,
        "Accepted for compatibility; no effect (ruling R13).",
        minimum="100ms",
        maximum="10m",
        no_effect=True,
    )
    gc_threshold: float = _key(
        0.7,
        Kind.FLOAT,
        "Accepted for compatibility; no effect (ruling R13).",
        minimum=0.5,
        maximum=1.0,
        no_effect=True,
    )
    cache_size: int = _key(
        "64MB",
        Kind.SIZE,
        "Accepted for compatibility; no effect (ruling R13).",
        minimum="16MB",
        maximum="1GB",
        no_effect=True,
    )


@attrs.frozen
class StorageConfig:
    """``storage.*``."""

    wal: WalConfig = attrs.field(factory=WalConfig)
    snapshot: SnapshotConfig = attrs.field(factory=SnapshotConfig)
    badger: BadgerConfig = attrs.field(factory=BadgerConfig)


# ============================================================================ telemetry.*


@attrs.frozen
class MetricsConfig:
    """Prometheus endpoint."""

    auth_enabled: bool = _key(
        True,
        Kind.BOOL,
        "/metrics requires a role=metrics or role=admin API key; served on the HTTP/HTTPS "
        "ports only.",
    )


@attrs.frozen
class LoggingConfig:
    """JSON Lines logging on stdout (there is no format or output key)."""

    level: str = _key(
        "info",
        Kind.ENUM,
        "Log level; hot-reloadable (SIGHUP, POST /admin/v1/config/apply).",
        hot=True,
        choices=("debug", "info", "warn", "error"),
    )
    dump_config: bool = _key(
        False, Kind.BOOL, "Log the full sanitized config at startup (effective_config)."
    )


@attrs.frozen
class TracingConfig:
    """OpenTelemetry tracing (P2)."""

    enabled: bool = _key(False, Kind.BOOL, "When false no tracing component is created.")
    endpoint: str = _key(
        "",
        Kind.URL,
        "OTLP/HTTP endpoint; required when tracing is on (1006).",
        range_text="http(s) URL",
        example="http://127.0.0.1:4318",
    )
    sampling_ratio: float = _key(
        0.01, Kind.FLOAT, "Fraction of traces sampled.", minimum=0.0, maximum=1.0
    )


@attrs.frozen
class AuditConfig:
    """Audit log."""

    retention_days: int = _key(
        90, Kind.INT, "Audit records older than this are purged.", minimum=1, maximum=3650
    )


@attrs.frozen
class TelemetryConfig:
    """``telemetry.*``."""

    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    tracing: TracingConfig = attrs.field(factory=TracingConfig)
    audit: AuditConfig = attrs.field(factory=AuditConfig)


# ============================================================================ events.*


@attrs.frozen
class EventsConfig:
    """``events.*``: the session event stream (``GET /events``). TokMesh addition."""

    include_touch: bool = _key(
        False,
        Kind.BOOL,
        "Also publish `touched` events (off by default: touches are frequent and would "
        "amplify every validation with touch into an event). TokMesh addition.",
        addition=True,
    )


# ============================================================================ root


@attrs.frozen
class Config:
    """The whole effective server configuration (immutable; rebuild it to change it)."""

    server: ServerConfig = attrs.field(factory=ServerConfig)
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig)
    session: SessionConfig = attrs.field(factory=SessionConfig)
    security: SecurityConfig = attrs.field(factory=SecurityConfig)
    storage: StorageConfig = attrs.field(factory=StorageConfig)
    telemetry: TelemetryConfig = attrs.field(factory=TelemetryConfig)
    events: EventsConfig = attrs.field(factory=EventsConfig)


# ============================================================================ registry


@attrs.frozen
class KeySpec:
    """One configuration key of the flat registry (dotted name -> everything about it)."""

    name: str
    kind: Kind
    default: Any
    default_text: str
    env: str
    hot: bool
    doc: str
    minimum: Any
    maximum: Any
    range_text: str
    choices: tuple[str, ...]
    gate: str | None
    addition: bool
    no_effect: bool
    example: str | None

    @property
    def leaf(self) -> str:
        """The last component of the dotted name (``cert_file``)."""
        return self.name.rsplit(".", 1)[-1]


def env_name(key: str) -> str:
    """The environment variable of a key: ``TOKMESH_`` + upper-cased key, ``.`` -> ``_``."""
    return "TOKMESH_" + key.upper().replace(".", "_")


# Owner flags: a key under one of these prefixes has its ranges and formats checked only
# when the flag is true (05 §3 "if on"). A per-key ``gate`` overrides this table.
_SECTION_GATES: tuple[tuple[str, str], ...] = (
    ("server.https.", "server.https.enabled"),
    ("server.redis.", "server.redis.enabled"),
    ("server.redis_tls.", "server.redis_tls.enabled"),
    ("cluster.", "cluster.enabled"),
    ("telemetry.tracing.", "telemetry.tracing.enabled"),
)

# The cluster needs its CA; the listeners' CA is optional. Same class, different rule.
_DOC_OVERRIDES: dict[str, str] = {
    "cluster.tls.cert_file": "PEM certificate of this node for node-to-node mTLS. Required when "
    "the cluster is on (1006); must be PEM and match key_file (1007).",
    "cluster.tls.key_file": "PEM private key matching cluster.tls.cert_file. Required when the "
    "cluster is on (1006).",
    "cluster.tls.client_ca_file": "CA that signs every node certificate (node-to-node mTLS). "
    "Required when the cluster is on (1006).",
}


def _section_class(field: attrs.Attribute[Any]) -> type[Any] | None:
    factory = getattr(field.default, "factory", None)
    if isinstance(factory, type) and attrs.has(factory):
        return factory
    return None


def _walk(cls: type[Any], prefix: str) -> Iterator[KeySpec]:
    for field in attrs.fields(cls):
        name = f"{prefix}{field.name}"
        meta: _Leaf | None = field.metadata.get(_META)
        if meta is None:
            sub = _section_class(field)
            assert sub is not None, name
            yield from _walk(sub, name + ".")
            continue
        gate = meta.gate
        if gate is None:
            for pfx, flag in _SECTION_GATES:
                if name.startswith(pfx) and name != flag:
                    gate = flag
                    break
        yield KeySpec(
            name=name,
            kind=meta.kind,
            default=field.default,
            default_text=meta.default_text,
            env=env_name(name),
            hot=meta.hot,
            doc=_DOC_OVERRIDES.get(name, meta.doc),
            minimum=meta.minimum,
            maximum=meta.maximum,
            range_text=meta.range_text,
            choices=meta.choices,
            gate=gate,
            addition=meta.addition,
            no_effect=meta.no_effect,
            example=meta.example,
        )


KEYS: Mapping[str, KeySpec] = {spec.name: spec for spec in _walk(Config, "")}
"""Every configuration key, in schema order."""

ENV_TO_KEY: Mapping[str, str] = {spec.env: spec.name for spec in KEYS.values()}
"""Environment lookup table (05 §2.4, D18): never map ``_`` back to ``.`` naively."""
assert len(ENV_TO_KEY) == len(KEYS), "environment names collide"

SECTIONS: frozenset[str] = frozenset(
    name.rsplit(".", i)[0] for name in KEYS for i in range(1, name.count(".") + 1)
)
"""Every dotted section path (``server``, ``server.https``, ``server.https.tls`` ...)."""

PATH_KEYS: tuple[str, ...] = tuple(k for k, s in KEYS.items() if s.kind is Kind.PATH)
"""Keys resolved against the config file's directory after the merge (05 §2.7)."""

FLAG_KEYS: tuple[str, ...] = (
    "server.http.address",
    "server.https.address",
    "server.http.enabled",
    "server.https.enabled",
    "cluster.enabled",
    "cluster.node_id",
    "cluster.listen_address",
    "cluster.advertise_address",
    "telemetry.logging.level",
    "telemetry.logging.dump_config",
    "telemetry.metrics.auth_enabled",
    "storage.wal.dir",
    "storage.snapshot.dir",
    "storage.wal.sync_mode",
)
"""Keys settable by a ``tokmesh-server --<key>`` flag (05 §2.5; ``--config`` is separate)."""


# ============================================================================ helpers


def _build(cls: type[Any], prefix: str, flat: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(cls):
        name = f"{prefix}{field.name}"
        if _META in field.metadata:
            if name in flat:
                kwargs[field.name] = flat[name]
        else:
            sub = _section_class(field)
            assert sub is not None
            kwargs[field.name] = _build(sub, name + ".", flat)
    return cls(**kwargs)


def build_config(flat: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from canonical values keyed by dotted name; missing = default."""
    result: Config = _build(Config, "", flat)
    return result


def default_config() -> Config:
    """The built-in defaults (zero-config start)."""
    return Config()


def config_to_flat(cfg: Config) -> dict[str, Any]:
    """Every key's canonical value, keyed by dotted name, in schema order."""
    out: dict[str, Any] = {}
    for name in KEYS:
        obj: Any = cfg
        for part in name.split("."):
            obj = getattr(obj, part)
        out[name] = obj
    return out


def format_value(spec: KeySpec, value: Any) -> Any:
    """Render a canonical value in file form (``7200.0`` -> ``"2h"``); lists as lists."""
    if spec.kind is Kind.DURATION and isinstance(value, int | float):
        return format_duration(float(value))
    if spec.kind is Kind.SIZE and isinstance(value, int):
        return format_size(value)
    if spec.kind is Kind.RATE and isinstance(value, int):
        return format_rate(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted names whose value differs between two configs (SIGHUP / reload diff, 05 §5)."""
    a, b = config_to_flat(old), config_to_flat(new)
    return [k for k in KEYS if a[k] != b[k]]
