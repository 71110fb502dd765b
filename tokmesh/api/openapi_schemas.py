"""What the OpenAPI document says about each route (03 §2-§4): shapes, parameters, errors.

The route records (``business.py``, ``admin.py``, ``ops.py``) say how a request is served;
this module says how it looks on the wire, keyed by ``(method, path template)``. A route
without an entry here is still documented (from its record, with the generic envelope
and the errors of its scope); :data:`OPERATIONS` exists so that every route of the
contract has exact shapes.

Shapes are strict where the contract is strict: request bodies reject unknown fields
(``additionalProperties: false``, 03 §2.3) and the success/error envelopes list every
field the server sends.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from tokmesh.domain.errors import E, ErrorCode

Schema = dict[str, Any]

#: the wire pattern of every error code (03 §2.2)
ERROR_CODE_PATTERN: Final = r"^TM-[A-Z]+-[0-9]{4}$"
#: the default of ``session.ttl.max`` (720 h); the served document uses the running value
DEFAULT_TTL_MAX_SECONDS: Final = 720 * 3600

SESSION_ID_PATTERN: Final = r"^tmss-[0-9a-z]{26}$"
KEY_ID_PATTERN: Final = r"^tmak-[0-9a-z]{26}$"
TOKEN_PATTERN: Final = r"^tmtk_[A-Za-z0-9_-]{43}$"
KEY_SECRET_PATTERN: Final = r"^tmas_[0-9A-Za-z]+$"
ROLES: Final = ["metrics", "validator", "issuer", "admin"]


def ref(name: str) -> Schema:
    """A ``$ref`` to ``#/components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    """A closed object: exactly ``props``, ``required`` must be present."""
    out: Schema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    out.update(extra)
    return out


_MS: Final[Schema] = {"type": "integer", "minimum": 0, "description": "Unix milliseconds"}
_MS0: Final[Schema] = {
    "type": "integer",
    "minimum": 0,
    "description": "Unix milliseconds; 0 = never / unset",
}
_COUNT: Final[Schema] = {"type": "integer", "minimum": 0}


def _str(max_len: int | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "string"}
    if max_len is not None:
        out["maxLength"] = max_len
    out.update(extra)
    return out


_SESSION_PROPS: Final[dict[str, Schema]] = {
    "id": _str(pattern=SESSION_ID_PATTERN, description="Session ID (lower-case ULID)"),
    "user_id": _str(description="Owner, 1-128 UTF-8 bytes"),
    "device_id": _str(description='Device, "" if unset'),
    "ip_address": _str(description="Client IP at creation (immutable)"),
    "user_agent": _str(512, description="User-Agent at creation (immutable, truncated)"),
    "last_access_ip": _str(description="Client IP of the last recorded access"),
    "last_access_ua": _str(512, description="User-Agent of the last recorded access"),
    "created_by": _str(description="key_id of the creating API key"),
    "created_at": _MS,
    "expires_at": _MS0,
    "last_active": _MS,
    "data": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Application data, string to string ({} if unset)",
    },
    "version": {
        "type": "integer",
        "minimum": 1,
        "description": "+1 on every mutation (optimistic lock)",
    },
    "idle_timeout_seconds": {
        "type": "integer",
        "minimum": 1,
        "description": "Sliding idle timeout; present only when the session has one",
    },
}
_SESSION_ALWAYS: Final = [k for k in _SESSION_PROPS if k != "idle_timeout_seconds"]
#: fields a touch response keeps whatever ``fields`` asks for (03 §2.5)
TOUCH_MANDATORY: Final = ["id", "user_id", "expires_at", "last_active", "version"]

_PAGE_PROPS: Final[dict[str, Schema]] = {
    "total_items": {"type": "integer", "minimum": 0, "description": "Matches before paging"},
    "page": {"type": "integer", "minimum": 1},
    "size": {"type": "integer", "minimum": 1, "maximum": 100},
}


def page_of(item: Schema) -> Schema:
    """The list shape of 03 §2.5: ``{items, total_items, page, size}``."""
    return _obj(
        {"items": {"type": "array", "items": item}, **_PAGE_PROPS},
        ["items", "total_items", "page", "size"],
    )


def component_schemas(ttl_max_seconds: int = DEFAULT_TTL_MAX_SECONDS) -> dict[str, Schema]:
    """Every named schema of ``components.schemas``."""
    ttl_about = f"Seconds, 1..session.ttl.max ({ttl_max_seconds} on this node)"
    ttl: Schema = {
        "type": "integer",
        "minimum": 1,
        "maximum": ttl_max_seconds,
        "description": ttl_about,
    }
    return {
        "ErrorCode": {
            "type": "string",
            "pattern": ERROR_CODE_PATTERN,
            "description": "TM-<MODULE>-<NNNN>; also in the X-Error-Code header",
        },
        "RequestId": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "description": "Equals the X-Request-ID response header",
        },
        "ErrorEnvelope": _obj(
            {
                "code": ref("ErrorCode"),
                "message": {"type": "string", "description": "Short text, never secrets"},
                "request_id": ref("RequestId"),
                "timestamp": {**_MS, "description": "Response build time, Unix ms"},
                "details": {"type": "object", "description": "Optional facts about the error"},
            },
            ["code", "message", "request_id", "timestamp"],
            description="Every error response (03 §2.2)",
        ),
        "Session": _obj(
            dict(_SESSION_PROPS),
            list(_SESSION_ALWAYS),
            description="A session (03 §3.1); token and token hash are never returned",
        ),
        "SessionFields": _obj(
            dict(_SESSION_PROPS),
            ["id"],
            description="A session trimmed by `fields` (id always kept)",
        ),
        "TouchedSession": _obj(
            dict(_SESSION_PROPS),
            list(TOUCH_MANDATORY),
            description="A touched session trimmed by `fields` (5 fields always kept)",
        ),
        "SessionData": {
            "type": "object",
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 1024},
            "description": (
                "String to string; key ≤ 64 B, value ≤ 1024 B, Σ keys+values ≤ 4096 UTF-8 "
                "bytes (else 400 TM-SESS-4001); a non-string value is 400 TM-SYS-4000"
            ),
        },
        "CreateSessionRequest": _obj(
            {
                "user_id": _str(128, minLength=1, description="Owner, 1-128 UTF-8 bytes"),
                "device_id": _str(128, description="≤ 128 UTF-8 bytes"),
                "ttl_seconds": {**ttl, "description": ttl_about + "; default 2 h"},
                "data": ref("SessionData"),
                "token": _str(
                    pattern=TOKEN_PATTERN,
                    description="Caller-chosen token (else generated); in use => 409",
                ),
                "idle_timeout_seconds": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Sliding idle timeout (0 = none)",
                },
            },
            ["user_id"],
        ),
        "CreateSessionResult": _obj(
            {
                "session_id": _str(pattern=SESSION_ID_PATTERN),
                "token": _str(
                    pattern=TOKEN_PATTERN,
                    description="The plaintext token: returned here only, never again",
                ),
                "expires_at": _MS,
                "session": ref("Session"),
            },
            ["session_id", "token", "expires_at", "session"],
        ),
        "RenewRequest": _obj(
            {
                "ttl_seconds": ttl,
                "expected_version": {
                    "type": "integer",
                    "description": "Optimistic lock: 409 TM-SESS-4091 if the version differs",
                },
            },
            ["ttl_seconds"],
        ),
        "RenewResult": _obj(
            {
                "new_expires_at": {**_MS, "description": "now + ttl_seconds, Unix ms"},
                "version": {"type": "integer", "minimum": 1},
            },
            ["new_expires_at"],
        ),
        "RevokeRequest": _obj(
            {"sync": {"type": "boolean", "default": False, "description": "Wait for quorum"}}
        ),
        "RevokeResult": _obj({"success": {"const": True}}, ["success"]),
        "RevokeUserRequest": _obj(
            {
                "sync": {"type": "boolean", "default": False},
                "except_session_id": _str(description="Keep this one session"),
            }
        ),
        "RevokeUserResult": _obj({"revoked_count": _COUNT}, ["revoked_count"]),
        "ValidateRequest": _obj(
            {
                "token": _str(minLength=1, description="tmtk_ + 43 base64url characters"),
                "touch": {
                    "type": "boolean",
                    "default": False,
                    "description": "Also update last_active and last_access_ip/ua",
                },
            },
            ["token"],
        ),
        "ValidateResult": _obj(
            {"valid": {"const": True}, "session": ref("Session")}, ["valid", "session"]
        ),
        "EmptyRequest": _obj({}, description="Empty body or {}", maxProperties=0),
        **oauth2_schemas(),
        "SessionEvent": _obj(
            {
                "cursor": _str(
                    pattern="^[0-9]{1,20}$",
                    description="WAL position after the change, as a decimal string: "
                    "resume with ?cursor=",
                ),
                "type": {
                    "enum": ["created", "renewed", "touched", "updated", "revoked", "expired"]
                },
                "session_id": _str(),
                "user_id": {"type": "string"},
                "device_id": {"type": "string"},
                "at": _MS,
                "version": {"type": "integer", "minimum": 0},
                "by": _str(description='API key ID that caused the change, or "system"'),
            },
            ["cursor", "type", "session_id", "user_id", "device_id", "at", "version", "by"],
            description="The JSON payload of one WebSocket text frame of GET /events",
        ),
        "SessionList": page_of(ref("SessionFields")),
        "Health": _obj({"status": {"const": "healthy"}, "timestamp": _MS}, ["status", "timestamp"]),
        "ReadyChecks": {
            "type": "object",
            "properties": {
                "storage": {
                    "enum": ["ok", "starting", "recovering", "restoring", "stopping", "failed"]
                },
                "cluster": {"type": "string"},
                "storage_reason": {
                    "type": "string",
                    "description": "Why storage failed (e.g. No space left on device); "
                    "present only while storage is failed",
                },
            },
            "required": ["storage", "cluster"],
        },
        "Ready": _obj(
            {"status": {"const": "ready"}, "checks": ref("ReadyChecks")}, ["status", "checks"]
        ),
        "StatusMetrics": _obj(
            {
                "total_sessions": _COUNT,
                "stored_records": _COUNT,
                "active_sessions": _COUNT,
                "memory_usage_mb": {"type": "number", "minimum": 0},
                "current_qps": {"type": "number", "minimum": 0},
                "goroutines": {**_COUNT, "description": "Live Trio tasks"},
            },
            ["total_sessions", "active_sessions", "memory_usage_mb", "current_qps", "goroutines"],
        ),
        "StatusSummary": _obj(
            {
                "uptime_seconds": _COUNT,
                "version": _str(),
                "build_time": _str(description="RFC 3339 build stamp"),
                "node_id": _str(pattern=r"^tmnd-"),
                "cluster_state": _str(
                    description='"healthy" when /ready would answer 200, else why not'
                ),
                "role": {
                    "enum": ["leader", "follower"],
                    "description": "Cluster mode only: this node's role",
                },
                "nodes": {**_COUNT, "description": "Cluster mode only: member count"},
                "total_sessions": _COUNT,
                "memory_usage_mb": {"type": "number", "minimum": 0},
                "current_qps": {"type": "number", "minimum": 0},
                "metrics": ref("StatusMetrics"),
            },
            [
                "uptime_seconds",
                "version",
                "build_time",
                "node_id",
                "cluster_state",
                "total_sessions",
                "memory_usage_mb",
                "current_qps",
                "metrics",
            ],
        ),
        "GcRequest": _obj(
            {
                "type": {
                    "enum": ["expired_sessions", "expired", "memory", "all"],
                    "default": "expired_sessions",
                }
            }
        ),
        "GcResult": _obj(
            {
                "cleaned_count": _COUNT,
                "duration_ms": {"type": "number", "minimum": 0},
                "freed_memory_mb": {"type": "number", "minimum": 0},
            },
            ["cleaned_count", "duration_ms", "freed_memory_mb"],
        ),
        "Role": {"enum": list(ROLES)},
        "KeyStatus": {"enum": ["active", "disabled"]},
        "ApiKey": _obj(
            {
                "key_id": _str(pattern=KEY_ID_PATTERN),
                "role": ref("Role"),
                "status": ref("KeyStatus"),
                "description": _str(256),
                "allowedlist": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
                "rate_limit": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                "created_at": _MS,
                "created_by": _str(description="key_id of the creator, or LOCAL_ADMIN"),
                "expires_at": _MS0,
                "last_used_at": _MS0,
                "grace_period_end": _MS0,
            },
            [
                "key_id",
                "role",
                "status",
                "description",
                "allowedlist",
                "rate_limit",
                "created_at",
                "created_by",
                "expires_at",
                "last_used_at",
                "grace_period_end",
            ],
            description="An API key (03 §4.2); never secrets or hashes",
        ),
        "ApiKeyList": page_of(ref("ApiKey")),
        "CreateKeyRequest": _obj(
            {
                "role": ref("Role"),
                "description": _str(256),
                "allowedlist": {
                    "type": "array",
                    "items": {"type": "string", "description": "IPv4/IPv6 address or CIDR"},
                    "maxItems": 100,
                },
                "rate_limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 1_000_000,
                    "default": 1000,
                    "description": "Requests per second",
                },
                "expires_at": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Future Unix ms; 0 or absent = never",
                },
            },
            ["role"],
        ),
        "CreateKeyResult": _obj(
            {
                "key_id": _str(pattern=KEY_ID_PATTERN),
                "key_secret": _str(
                    pattern=KEY_SECRET_PATTERN, description="Shown once, unrecoverable later"
                ),
                "role": ref("Role"),
                "created_at": _MS,
                "expires_at": _MS0,
                "warning": _str(description="Set when the key is valid for more than 1 year"),
            },
            ["key_id", "key_secret", "role", "created_at", "expires_at"],
        ),
        "KeyStatusRequest": _obj({"status": ref("KeyStatus")}, ["status"]),
        "KeyStatusResult": _obj(
            {
                "key_id": _str(pattern=KEY_ID_PATTERN),
                "status": ref("KeyStatus"),
                "updated_at": _MS,
                "warning": _str(description="Set when the last active admin key was disabled"),
            },
            ["key_id", "status", "updated_at"],
        ),
        "RotateKeyResult": _obj(
            {
                "key_id": _str(pattern=KEY_ID_PATTERN),
                "new_key_secret": _str(pattern=KEY_SECRET_PATTERN),
                "old_secret_valid_until": _MS,
            },
            ["key_id", "new_key_secret", "old_secret_valid_until"],
        ),
        "AuditRecord": {
            "type": "object",
            "properties": {
                "id": _str(pattern=r"^audit-"),
                "timestamp": _MS,
                "operator_id": {"type": ["string", "null"]},
                "operator_role": {"type": ["string", "null"]},
                "action": _str(),
                "resource": _str(),
                "ip_address": {"type": ["string", "null"]},
                "tcp_remote_ip": {"type": ["string", "null"]},
                "user_agent": {"type": ["string", "null"]},
                "request_id": {"type": ["string", "null"]},
                "details": {"type": "object", "description": "Redacted"},
                "result": {"enum": ["SUCCESS", "FAILURE"]},
                "method": _str(),
                "route": _str(),
                "status": {"type": "integer"},
                "duration_ms": {"type": "number"},
            },
            "required": ["id", "timestamp", "action", "result"],
            "description": "One audit entry (03 §4.4); details are redacted",
        },
        "AuditList": page_of(ref("AuditRecord")),
        "ClusterNode": _obj(
            {
                "node_id": _str(),
                "address": {"type": ["string", "null"], "description": "Cluster port"},
                "status": {"enum": ["active", "suspect", "down"]},
                "role": {
                    "enum": ["leader", "follower"],
                    "description": "leader = the coordinator, which writes the shard map",
                },
                "version": {"type": ["string", "null"]},
                "uptime_seconds": {"type": ["integer", "null"], "minimum": 0},
                "metrics": _obj({"shards": _COUNT, "vnodes": _COUNT}, ["shards", "vnodes"]),
            },
            ["node_id", "address", "status", "role", "version", "uptime_seconds", "metrics"],
            description="One member or shard owner as this node sees it",
        ),
        "ClusterNodes": _obj(
            {
                "nodes": {"type": "array", "items": ref("ClusterNode")},
                "cluster_id": {"type": ["string", "null"]},
                "leader_id": {"type": ["string", "null"]},
            },
            ["nodes", "cluster_id", "leader_id"],
        ),
        "ClusterStatus": _obj(
            {
                "cluster_id": {"type": ["string", "null"], "description": "null before joining"},
                "node_id": _str(description="This node"),
                "leader_id": {"type": ["string", "null"], "description": "The coordinator"},
                "state": _str(description='The cluster check of /ready; "ok" when serving'),
                "membership": {"enum": ["connecting", "connected", "lost"]},
                "nodes": _obj(
                    {"total": _COUNT, "active": _COUNT, "suspect": _COUNT, "down": _COUNT},
                    ["total", "active", "suspect", "down"],
                ),
                "parity": _obj(
                    {"even": {"type": "boolean"}, "health": {"enum": ["OK", "DEGRADED"]}},
                    ["even", "health"],
                ),
                "shard_map": {
                    "anyOf": [
                        {"type": "null"},
                        _obj(
                            {
                                "version": {"type": "integer", "minimum": 1},
                                "owners": {
                                    "type": "object",
                                    "additionalProperties": _COUNT,
                                    "description": "node_id -> shards owned",
                                },
                            },
                            ["version", "owners"],
                        ),
                    ],
                    "description": "The map in force here; null until one was read",
                },
                "replication_factor": {"type": "integer", "minimum": 1},
                "under_replicated_shards": {"type": "array", "items": {"type": "integer"}},
            },
            [
                "cluster_id",
                "node_id",
                "leader_id",
                "state",
                "membership",
                "nodes",
                "parity",
                "shard_map",
                "replication_factor",
                "under_replicated_shards",
            ],
            description="Topology, health and shard map as this node sees them",
        ),
        "ClusterResetRequest": _obj(
            {"force": {"const": True}, "confirm": {"const": "RESET_CONFIRM"}},
            ["force", "confirm"],
        ),
        "ClusterActionResult": {
            "type": "object",
            "properties": {
                "status": _str(description="left, not_started, removed, reset_initiated"),
                "message": _str(),
                "node_id": _str(),
                "reason": _str(description="Why nothing was done"),
                "data_moved": {"type": "boolean"},
                "note": _str(),
            },
            "required": ["status"],
        },
        "Snapshot": _obj(
            {
                "snapshot_id": _str(description="snap-YYYYMMDD-HHMMSS"),
                "size_bytes": _COUNT,
                "path": _str(),
                "created_at": _MS,
                "checksum": _str(pattern=r"^sha256:[0-9a-f]{64}$"),
                "description": _str(256),
                "type": _str(description="manual, scheduled, wal-compact, pre-restore …"),
                "encrypted": {"type": "boolean"},
                "session_count": _COUNT,
                "key_count": _COUNT,
            },
            ["snapshot_id", "size_bytes", "path", "created_at", "checksum", "description"],
            description="A snapshot usable as a backup (03 §4.3)",
        ),
        "SnapshotList": page_of(ref("Snapshot")),
        "CreateSnapshotRequest": _obj({"description": _str(256)}),
        "RestoreRequest": _obj(
            {"snapshot_id": _str(description="Restore this snapshot (preferred)")},
            description="Either snapshot_id here or a multipart upload",
        ),
        "RestoreUpload": {
            "type": "object",
            "properties": {
                "file": {
                    "type": "string",
                    "contentMediaType": "application/octet-stream",
                    "description": "A .bak backup file (TOKMESH_BAK_V1)",
                },
                "snapshot_id": _str(),
            },
            "additionalProperties": False,
            "description": "multipart/form-data: part `file` (or `snapshot_id`, not both)",
        },
        "RestoreJobStatus": {"enum": ["RUNNING", "FAILED", "IDLE"]},
        "RestoreStarted": _obj(
            {
                "job_id": _str(),
                "status": ref("RestoreJobStatus"),
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "message": _str(),
            },
            ["job_id", "status", "progress", "message"],
        ),
        "RestoreJob": _obj(
            {
                "job_id": _str(),
                "status": ref("RestoreJobStatus"),
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "message": _str(),
                "snapshot_id": _str(),
                "started_at": _MS,
                "finished_at": {**_MS0, "description": "Unix ms; 0 while running"},
            },
            [
                "job_id",
                "status",
                "progress",
                "message",
                "snapshot_id",
                "started_at",
                "finished_at",
            ],
        ),
        "WalStatus": _obj(
            {
                "enabled": {"type": "boolean"},
                "sync_mode": _str(description='"sync" or "batch"'),
                "current_segment": _COUNT,
                "current_segment_file": _str(),
                "total_segments": _COUNT,
                "total_size_bytes": _COUNT,
                "oldest_entry_time": _MS0,
                "newest_entry_time": _MS0,
                "last_offset": _COUNT,
            },
            [
                "enabled",
                "sync_mode",
                "current_segment",
                "total_segments",
                "total_size_bytes",
                "oldest_entry_time",
                "newest_entry_time",
                "last_offset",
            ],
        ),
        "WalCompactResult": _obj(
            {
                "snapshot_id": _str(),
                "removed_segments": _COUNT,
                "removed_files": {"type": "array", "items": {"type": "string"}},
                "freed_bytes": _COUNT,
            },
            ["snapshot_id", "removed_segments", "freed_bytes"],
        ),
        "ConfigTree": {
            "type": "object",
            "description": (
                "Nested config keys; without ?merged=true only the hot-reloadable subset "
                "{telemetry: {logging: {level}}}, with it the full config, secrets redacted"
            ),
        },
        "ConfigApplyRequest": {
            "type": "object",
            "description": (
                "A partial config tree, e.g. {telemetry: {logging: {level: debug}}}; paths "
                "that are not hot-reloadable are listed in `rejected`"
            ),
        },
        "ConfigApplyResult": _obj(
            {
                "updated": {"type": "array", "items": {"type": "string"}},
                "rejected": {"type": "array", "items": {"type": "string"}},
                "message": _str(),
            },
            ["updated", "rejected", "message"],
        ),
        "ConfigValidateRequest": _obj({"config_yaml": _str(minLength=1)}, ["config_yaml"]),
        "ConfigIssue": _obj(
            {
                "code": {"type": "string", "pattern": r"^TM-CFG-[0-9]{4}$"},
                "field": _str(),
                "message": _str(),
            },
            ["code", "field", "message"],
        ),
        "ConfigValidateResult": _obj(
            {
                "valid": {"type": "boolean"},
                "errors": {"type": "array", "items": ref("ConfigIssue")},
            },
            ["valid", "errors"],
        ),
        "ConfigReloadResult": _obj(
            {
                "updated": {"type": "array", "items": {"type": "string"}},
                "ignored": {"type": "array", "items": {"type": "string"}},
            },
            ["updated", "ignored"],
        ),
        "OpenApiDocument": {
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "properties": {"openapi": {"const": "3.1.0"}},
        },
    }


@attrs.frozen
class Param:
    """A query or path parameter."""

    name: str
    schema: Schema
    description: str = ""
    location: str = "query"
    required: bool = False


def oauth2_schemas() -> dict[str, Schema]:
    """The OAuth 2.0 shapes: form requests, the introspection answer, the error body."""
    hint = _str(
        description="access_token, refresh_token or anything else: ignored (a TokMesh "
        "token is always a session token)"
    )
    token = _str(minLength=1, description="The session token (tmtk_…)")
    # Unknown form parameters are ignored (RFC 6749 §3.2), so the forms stay open.
    return {
        "OAuth2IntrospectionRequest": {
            "type": "object",
            "required": ["token"],
            "properties": {"token": token, "token_type_hint": hint},
        },
        "OAuth2RevocationRequest": {
            "type": "object",
            "required": ["token"],
            "properties": {"token": token, "token_type_hint": hint},
        },
        "OAuth2IntrospectionResponse": _obj(
            {
                "active": {"type": "boolean", "description": "false: nothing else is sent"},
                "sub": _str(description="The session's user_id"),
                "client_id": _str(description="key_id of the API key that created the session"),
                "token_type": {"const": "Bearer"},
                "iat": {"type": "integer", "minimum": 0, "description": "Created, Unix seconds"},
                "exp": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Unix seconds the session ends (absolute expiry or idle "
                    "timeout, whichever comes first); absent if it never ends",
                },
                "sid": _str(pattern=SESSION_ID_PATTERN, description="The session ID"),
            },
            ["active"],
        ),
        "OAuth2Error": _obj(
            {
                "error": {
                    "enum": [
                        "invalid_request",
                        "invalid_client",
                        "unauthorized_client",
                        "temporarily_unavailable",
                        "server_error",
                    ],
                    "description": "RFC 6749 §5.2 error code",
                },
                "error_description": _str(description="Human-readable detail"),
            },
            ["error", "error_description"],
        ),
    }


@attrs.frozen
class OpDoc:
    """The wire description of one route.

    ``data``: the schema of the success envelope's ``data`` (``None`` with a non-JSON
    ``media``). ``body``: the JSON request body schema (``None`` = no body).
    ``errors``: the route's own error codes beyond those of its scope.
    """

    operation_id: str
    tag: str
    data: Schema | None = None
    body: Schema | None = None
    body_required: bool = False
    query: tuple[Param, ...] = ()
    errors: tuple[ErrorCode, ...] = ()
    description: str = ""
    roles: tuple[str, ...] = ()
    media: str = "application/json"
    media_schema: Schema | None = None
    #: further success statuses with the same body (206 of a ranged download)
    more_success: tuple[int, ...] = ()
    #: errors sent with a status other than their catalogue status (416 range errors)
    status_overrides: tuple[tuple[int, ErrorCode], ...] = ()
    #: other request media types and their schemas (the multipart restore upload)
    more_bodies: tuple[tuple[str, Schema], ...] = ()
    #: extra success response headers: name -> header object
    success_headers: tuple[tuple[str, Schema], ...] = ()
    #: the request body's media type (the OAuth 2.0 routes take a form)
    body_media: str = "application/json"
    #: the body of the errors the route renders itself, instead of the envelope (OAuth
    #: 2.0 ``{"error", "error_description"}``); the code is then only in X-Error-Code
    error_schema: Schema | None = None
    #: the success answer has no body (OAuth 2.0 revocation)
    empty_success: bool = False
    #: security schemes accepted besides the usual ones, listed first (HTTP Basic)
    more_security: tuple[str, ...] = ()


_PAGE: Final = Param("page", {"type": "integer", "minimum": 1, "default": 1}, "Page number (≥ 1)")
_SIZE: Final = Param(
    "size",
    {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    "Page size 1..100 (out of range: 400 TM-ARG-1001 with details.max_size=100)",
)
_FIELDS: Final = Param(
    "fields",
    {"type": "string"},
    "Comma list of Session field names to keep; unknown name: 400 TM-ARG-1001",
)
_TIME: Final[Schema] = {
    "anyOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}],
}

_ISSUER: Final = ("issuer", "admin")
_VALIDATOR: Final = ("validator", "issuer", "admin")
_ADMIN: Final = ("admin",)
P: Final = "/admin/v1"
_STANDALONE: Final = "501 TM-SYS-5010 while the node runs standalone."

_NO_STORE: Final = (
    (
        "Cache-Control",
        {"description": "Always no-store", "required": True, "schema": {"const": "no-store"}},
    ),
)

OPERATIONS: Final[dict[tuple[str, str], OpDoc]] = {
    ("POST", "/sessions"): OpDoc(
        "createSession",
        "Sessions",
        data=ref("CreateSessionResult"),
        body=ref("CreateSessionRequest"),
        body_required=True,
        errors=(
            E.ARG_INVALID,
            E.ARG_MISSING,
            E.SESS_INVALID,
            E.TOKN_MALFORMED,
            E.TOKN_EXISTS,
            E.SESS_EXISTS,
            E.SESS_QUOTA,
        ),
        description=(
            "Creates a session and returns its plaintext token (the only time it is "
            "returned). More than session.quota.max_per_user live sessions of a user: "
            "429 TM-SESS-4002 (or the oldest is evicted under quota_policy evict_oldest)."
        ),
        roles=_ISSUER,
    ),
    ("GET", "/sessions"): OpDoc(
        "listSessions",
        "Sessions",
        data=ref("SessionList"),
        query=(
            Param("user_id", {"type": "string"}, "Exact owner (required for issuer keys)"),
            Param("device_id", {"type": "string"}, "Exact device"),
            Param("ip_address", {"type": "string"}, "Exact IP or CIDR against ip_address"),
            Param("key_id", {"type": "string"}, "created_by, exact"),
            Param("time_range_start", _TIME, "created_at ≥ value (Unix ms or RFC 3339)"),
            Param("time_range_end", _TIME, "created_at ≤ value (Unix ms or RFC 3339)"),
            Param("active_after", _TIME, "last_active > value (Unix ms or RFC 3339)"),
            Param("status", {"enum": ["active", "expired"], "default": "active"}),
            Param("sort_by", {"enum": ["created_at", "last_active"], "default": "created_at"}),
            Param("sort_order", {"enum": ["desc", "asc"], "default": "desc"}),
            _PAGE,
            _SIZE,
            _FIELDS,
        ),
        errors=(E.ARG_INVALID,),
        description=(
            "Filters are AND-ed; expired sessions are excluded. Issuer keys must filter "
            "by user_id (else 403 TM-AUTH-4030); validator keys are refused."
        ),
        roles=("issuer (with user_id)", "admin"),
    ),
    ("GET", "/sessions/{session_id}"): OpDoc(
        "getSession",
        "Sessions",
        data=ref("SessionFields"),
        query=(_FIELDS,),
        errors=(E.ARG_INVALID, E.SESS_NOT_FOUND, E.SESS_EXPIRED),
        description=(
            "Pure read: changes nothing. Unknown or malformed id: 404 TM-SESS-4040; "
            "expired: 404 TM-SESS-4041. Without `fields` every Session field is present."
        ),
        roles=_VALIDATOR,
    ),
    ("POST", "/sessions/{session_id}/touch"): OpDoc(
        "touchSession",
        "Sessions",
        data=ref("TouchedSession"),
        body=ref("EmptyRequest"),
        query=(_FIELDS,),
        errors=(E.ARG_INVALID, E.SESS_NOT_FOUND, E.SESS_EXPIRED),
        description=(
            "last_active = max(old, now); expires_at and IP/UA fields untouched. The body "
            "must be empty or {}."
        ),
        roles=_VALIDATOR,
    ),
    ("POST", "/sessions/{session_id}/renew"): OpDoc(
        "renewSession",
        "Sessions",
        data=ref("RenewResult"),
        body=ref("RenewRequest"),
        body_required=True,
        errors=(E.ARG_INVALID, E.ARG_MISSING, E.SESS_NOT_FOUND, E.SESS_EXPIRED, E.SESS_CONFLICT),
        description="expires_at = now + ttl_seconds and last_active = now; nothing else.",
        roles=_ISSUER,
    ),
    ("POST", "/sessions/{session_id}/revoke"): OpDoc(
        "revokeSession",
        "Sessions",
        data=ref("RevokeResult"),
        body=ref("RevokeRequest"),
        description=(
            "Idempotent: unknown, expired or already revoked sessions also answer 200. "
            "sync=true waits for a quorum (standalone: same as false)."
        ),
        roles=_ISSUER,
    ),
    ("POST", "/users/{user_id}/sessions/revoke"): OpDoc(
        "revokeUserSessions",
        "Sessions",
        data=ref("RevokeUserResult"),
        body=ref("RevokeUserRequest"),
        errors=(E.ARG_INVALID, E.SESS_QUOTA),
        description=(
            "Revokes every live session of the user (0 is still 200). More than 1000 "
            "sessions: 429 TM-SESS-4002 and nothing is revoked."
        ),
        roles=_ISSUER,
    ),
    ("POST", "/tokens/validate"): OpDoc(
        "validateToken",
        "Tokens",
        data=ref("ValidateResult"),
        body=ref("ValidateRequest"),
        body_required=True,
        errors=(
            E.ARG_MISSING,
            E.TOKN_MALFORMED,
            E.TOKN_INVALID,
            E.TOKN_EXPIRED,
            E.TOKN_REVOKED,
        ),
        description=(
            "An invalid token is a 401 with the token code, never 200 valid:false. "
            "touch=true also records last_access_ip/ua."
        ),
        roles=_VALIDATOR,
    ),
    ("POST", "/oauth2/introspect"): OpDoc(
        "oauth2Introspect",
        "OAuth 2.0",
        body=ref("OAuth2IntrospectionRequest"),
        body_required=True,
        body_media="application/x-www-form-urlencoded",
        media_schema=ref("OAuth2IntrospectionResponse"),
        error_schema=ref("OAuth2Error"),
        errors=(E.ARG_MISSING,),
        success_headers=_NO_STORE,
        more_security=("basicAuth",),
        description=(
            "RFC 7662 token introspection for API gateways. The client authenticates with "
            "an API key: HTTP Basic (client_id = key ID, client_secret = key secret) or "
            "Bearer <key_id>:<key_secret>. A token that is unknown, expired, revoked or "
            "malformed answers 200 {active: false}. Never touches the session. Errors are "
            "RFC 6749 {error, error_description} bodies with the TokMesh code in "
            "X-Error-Code (405 and 413 keep the envelope: they are answered before the "
            "route is known)."
        ),
        roles=_VALIDATOR,
    ),
    ("POST", "/oauth2/revoke"): OpDoc(
        "oauth2Revoke",
        "OAuth 2.0",
        body=ref("OAuth2RevocationRequest"),
        body_required=True,
        body_media="application/x-www-form-urlencoded",
        empty_success=True,
        error_schema=ref("OAuth2Error"),
        errors=(E.ARG_MISSING, E.SYS_STORAGE),
        success_headers=_NO_STORE,
        more_security=("basicAuth",),
        description=(
            "RFC 7009 token revocation: revokes the token's session (as "
            "POST /sessions/{session_id}/revoke with sync: true). 200 with an empty body, "
            "also for a token that is unknown, expired, revoked or malformed. "
            "token_type_hint is ignored."
        ),
        roles=_ISSUER,
    ),
    ("GET", "/events"): OpDoc(
        "watchEvents",
        "Sessions",
        media_schema=ref("SessionEvent"),
        query=(
            Param(
                "cursor",
                {"type": "string", "pattern": "^[0-9]{1,20}$"},
                "Resume after this event's cursor (every later event still in the WAL, "
                "then live); absent: live events from now",
            ),
            Param("user_id", {"type": "string"}, "Only events of this user"),
            Param(
                "types",
                {"type": "string"},
                "Comma-separated event types (touched only with events.include_touch)",
            ),
        ),
        errors=(E.ARG_INVALID,),
        description=(
            "A WebSocket (Upgrade: websocket, native HTTP engine; under "
            "server.http.engine: hypercorn it is not served). 101 Switching Protocols, "
            "then one JSON text frame per session event (SessionEvent). Credentials as "
            "for every route, or for browsers as the subprotocol "
            "tokmesh.auth.<key_id:secret in unpadded base64url> offered beside "
            "tokmesh.events (which the server selects). Needs the events.read "
            "permission. Close codes: 1001 server stopping, 1013 not ready, 4400 bad "
            "cursor or filter, 4401 key no longer valid, 4408 no pong, 4410 cursor "
            "expired (resync), 4429 too slow. A request without the upgrade is 400 "
            "TM-ARG-1001. See docs/events.md."
        ),
        roles=_ADMIN,
    ),
    ("GET", "/health"): OpDoc(
        "health",
        "Observability",
        data=ref("Health"),
        description="Always 200 while the process runs; no dependency checks.",
    ),
    ("GET", "/ready"): OpDoc(
        "ready",
        "Observability",
        data=ref("Ready"),
        errors=(E.SYS_UNAVAILABLE,),
        description=(
            "200 once recovery finished; 503 TM-SYS-5030 with details {status: not_ready, "
            "checks} during startup, WAL replay, restore and shutdown."
        ),
    ),
    ("GET", "/metrics"): OpDoc(
        "metrics",
        "Observability",
        media="text/plain",
        media_schema={"type": "string"},
        description=(
            "Prometheus text exposition (text/plain; version=0.0.4). Needs a metrics or "
            "admin key unless telemetry.metrics.auth_enabled is false."
        ),
        roles=("metrics", "admin"),
    ),
    (
        "GET",
        f"{P}/status/summary",
    ): OpDoc(
        "getStatusSummary",
        "Admin",
        data=ref("StatusSummary"),
        description="Node status, consistent with /metrics.",
        roles=_ADMIN,
    ),
    ("POST", f"{P}/gc/trigger"): OpDoc(
        "triggerGc",
        "Admin",
        data=ref("GcResult"),
        body=ref("GcRequest"),
        errors=(E.ARG_INVALID, E.ADMIN_THROTTLED),
        description="The same type again within 60 s: 429 TM-ADMIN-4291 with Retry-After.",
        roles=_ADMIN,
    ),
    ("POST", f"{P}/keys"): OpDoc(
        "createApiKey",
        "API keys",
        data=ref("CreateKeyResult"),
        body=ref("CreateKeyRequest"),
        body_required=True,
        errors=(E.ARG_INVALID, E.ARG_MISSING),
        description="The secret is returned once. Missing role: 400 TM-ARG-1002.",
        roles=_ADMIN,
    ),
    ("GET", f"{P}/keys"): OpDoc(
        "listApiKeys",
        "API keys",
        data=ref("ApiKeyList"),
        query=(
            _PAGE,
            _SIZE,
            Param("role", ref("Role"), "Only keys of this role"),
            Param("status", ref("KeyStatus"), "Only keys in this status"),
        ),
        errors=(E.ARG_INVALID,),
        roles=_ADMIN,
    ),
    ("POST", f"{P}/keys/{{key_id}}/status"): OpDoc(
        "setApiKeyStatus",
        "API keys",
        data=ref("KeyStatusResult"),
        body=ref("KeyStatusRequest"),
        body_required=True,
        errors=(E.ARG_INVALID, E.ARG_MISSING, E.ADMIN_NOT_FOUND),
        description=(
            "Disabling is immediate. Disabling the last active admin key is allowed and "
            "answers a warning."
        ),
        roles=_ADMIN,
    ),
    ("POST", f"{P}/keys/{{key_id}}/rotate"): OpDoc(
        "rotateApiKey",
        "API keys",
        data=ref("RotateKeyResult"),
        body=ref("EmptyRequest"),
        errors=(E.ADMIN_NOT_FOUND,),
        description=(
            "The new secret works at once; the previous one until old_secret_valid_until."
        ),
        roles=_ADMIN,
    ),
    ("GET", f"{P}/audit/logs"): OpDoc(
        "queryAuditLogs",
        "Audit",
        data=ref("AuditList"),
        query=(
            Param("start_time", {"type": "integer", "minimum": 0}, "Unix ms, inclusive"),
            Param("end_time", {"type": "integer", "minimum": 0}, "Unix ms, inclusive"),
            Param("operator_id", {"type": "string"}, "Exact operator"),
            Param("action", {"type": "string"}, "Exact action, e.g. KEY_CREATED"),
            _PAGE,
            _SIZE,
        ),
        errors=(E.ARG_INVALID,),
        description="Newest first.",
        roles=_ADMIN,
    ),
    ("GET", f"{P}/cluster/status"): OpDoc(
        "getClusterStatus",
        "Cluster",
        data=ref("ClusterStatus"),
        errors=(E.SYS_NOT_IMPLEMENTED,),
        description=_STANDALONE,
        roles=_ADMIN,
    ),
    ("GET", f"{P}/cluster/nodes"): OpDoc(
        "listClusterNodes",
        "Cluster",
        data=ref("ClusterNodes"),
        errors=(E.SYS_NOT_IMPLEMENTED,),
        description=_STANDALONE,
        roles=_ADMIN,
    ),
    ("POST", f"{P}/cluster/rebalance"): OpDoc(
        "rebalanceCluster",
        "Cluster",
        data=ref("ClusterActionResult"),
        body=ref("EmptyRequest"),
        errors=(E.SYS_NOT_IMPLEMENTED,),
        description=(
            "Answers what was done: status not_started with a reason while live shards "
            "cannot move with their data. " + _STANDALONE
        ),
        roles=_ADMIN,
    ),
    ("POST", f"{P}/cluster/leave"): OpDoc(
        "leaveCluster",
        "Cluster",
        data=ref("ClusterActionResult"),
        body=ref("EmptyRequest"),
        errors=(E.SYS_NOT_IMPLEMENTED, E.CLST_TIMEOUT),
        description=(
            "This node leaves for good: its departure is recorded and its member key "
            "removed; the coordinator gives its shards to the others (without their "
            "sessions: data_moved false). 504 TM-CLST-5040 when etcd cannot be reached; "
            "repeating the call is safe. Audited as NODE_REMOVED. " + _STANDALONE
        ),
        roles=_ADMIN,
    ),
    ("POST", f"{P}/cluster/nodes/{{node_id}}/remove"): OpDoc(
        "removeClusterNode",
        "Cluster",
        data=ref("ClusterActionResult"),
        body=ref("EmptyRequest"),
        errors=(E.SYS_NOT_IMPLEMENTED, E.ADMIN_NOT_FOUND),
        description="501 TM-SYS-5010: not provided yet (run cluster leave on that node).",
        roles=_ADMIN,
    ),
    ("POST", f"{P}/cluster/reset"): OpDoc(
        "resetCluster",
        "Cluster",
        data=ref("ClusterActionResult"),
        body=ref("ClusterResetRequest"),
        errors=(E.SYS_NOT_IMPLEMENTED, E.ARG_INVALID, E.ARG_MISSING),
        description="501 TM-SYS-5010: not provided yet.",
        roles=_ADMIN,
    ),
    ("POST", f"{P}/backups/snapshots"): OpDoc(
        "createSnapshot",
        "Backups",
        data=ref("Snapshot"),
        body=ref("CreateSnapshotRequest"),
        errors=(E.ARG_INVALID, E.ADMIN_CONFLICT, E.ADMIN_FAILED),
        description="Takes a snapshot now (sessions, API keys, metadata; encrypted).",
        roles=_ADMIN,
    ),
    ("GET", f"{P}/backups/snapshots"): OpDoc(
        "listSnapshots",
        "Backups",
        data=ref("SnapshotList"),
        query=(_PAGE, _SIZE),
        errors=(E.ARG_INVALID,),
        roles=_ADMIN,
    ),
    ("GET", f"{P}/backups/snapshots/{{snapshot_id}}/file"): OpDoc(
        "downloadSnapshot",
        "Backups",
        media="application/octet-stream",
        media_schema={"type": "string", "contentMediaType": "application/octet-stream"},
        query=(Param("Range", {"type": "string"}, "One span: bytes=first-last", "header"),),
        errors=(E.ADMIN_NOT_FOUND,),
        more_success=(206,),
        status_overrides=((416, E.ARG_INVALID),),
        success_headers=(
            ("Content-Disposition", {"schema": {"type": "string"}, "required": True}),
            ("Accept-Ranges", {"schema": {"const": "bytes"}, "required": True}),
            ("Content-Range", {"schema": {"type": "string"}, "description": "206 only"}),
        ),
        description=(
            "The .bak file, streamed. One `Range: bytes=…` span gives 206 with "
            "Content-Range; an unsatisfiable range is 416 (TM-ARG-1001)."
        ),
        roles=_ADMIN,
    ),
    ("POST", f"{P}/backups/restores"): OpDoc(
        "startRestore",
        "Backups",
        data=ref("RestoreStarted"),
        body=ref("RestoreRequest"),
        more_bodies=(("multipart/form-data", ref("RestoreUpload")),),
        errors=(
            E.ARG_MISSING,
            E.ARG_CONFLICT,
            E.ADMIN_NOT_FOUND,
            E.ADMIN_CONFLICT,
            E.ADMIN_UNPROCESSABLE,
            E.ADMIN_FAILED,
        ),
        description=(
            "Restores a snapshot by id (JSON) or an uploaded .bak (multipart part `file`). "
            "While it runs, business routes answer 503 TM-ADMIN-5031 and /ready 503."
        ),
        roles=_ADMIN,
    ),
    ("GET", f"{P}/backups/restores/{{job_id}}"): OpDoc(
        "getRestoreJob",
        "Backups",
        data=ref("RestoreJob"),
        errors=(E.ADMIN_NOT_FOUND,),
        description="Job status: RUNNING, FAILED (message = reason) or IDLE (done, 100).",
        roles=_ADMIN,
    ),
    ("GET", f"{P}/wal/status"): OpDoc("getWalStatus", "WAL", data=ref("WalStatus"), roles=_ADMIN),
    ("POST", f"{P}/wal/compact"): OpDoc(
        "compactWal",
        "WAL",
        data=ref("WalCompactResult"),
        body=ref("EmptyRequest"),
        errors=(E.ADMIN_CONFLICT, E.ADMIN_FAILED),
        description="Takes a snapshot and deletes the WAL segments it covers (R14).",
        roles=_ADMIN,
    ),
    ("GET", f"{P}/wal/logs"): OpDoc(
        "readWalLogs",
        "WAL",
        media="application/octet-stream",
        media_schema={"type": "string", "contentMediaType": "application/octet-stream"},
        query=(
            Param("offset", {"type": "integer", "minimum": 0, "default": 0}, "Byte offset"),
            Param(
                "limit",
                {"type": "integer", "minimum": 1, "default": 1048576},
                "At most this many bytes",
            ),
            Param("follow", {"type": "boolean", "default": False}, "Stream new bytes"),
        ),
        errors=(E.ARG_INVALID,),
        description="Raw (encrypted) WAL bytes; offset past the end gives an empty 200.",
        roles=_ADMIN,
    ),
    ("GET", f"{P}/config"): OpDoc(
        "getConfig",
        "Configuration",
        data=ref("ConfigTree"),
        query=(Param("merged", {"type": "boolean", "default": False}, "Full config"),),
        roles=_ADMIN,
    ),
    ("POST", f"{P}/config/apply"): OpDoc(
        "applyConfig",
        "Configuration",
        data=ref("ConfigApplyResult"),
        body=ref("ConfigApplyRequest"),
        errors=(
            E.CFG_TYPE,
            E.CFG_RANGE,
            E.CFG_FILE_MISSING,
            E.CFG_PERMISSION,
            E.CFG_CONFLICT,
            E.CFG_DEPENDENCY,
            E.CFG_BAD_PEM,
            E.CFG_CERT_EXPIRED,
        ),
        description=(
            "Only telemetry.logging.level (debug|info|warn|error) applies live; an "
            "invalid value is 400 TM-CFG-… and nothing is applied."
        ),
        roles=_ADMIN,
    ),
    ("POST", f"{P}/config/validate"): OpDoc(
        "validateConfig",
        "Configuration",
        data=ref("ConfigValidateResult"),
        body=ref("ConfigValidateRequest"),
        body_required=True,
        errors=(E.ARG_MISSING,),
        description="200 with valid:false and the errors when the YAML is invalid.",
        roles=_ADMIN,
    ),
    ("POST", f"{P}/config/reload"): OpDoc(
        "reloadConfig",
        "Configuration",
        data=ref("ConfigReloadResult"),
        body=ref("EmptyRequest"),
        description="Re-reads the config file (= SIGHUP); restart-only changes are ignored.",
        roles=_ADMIN,
    ),
    ("GET", "/openapi.json"): OpDoc(
        "getOpenApiDocument",
        "Documentation",
        data=None,
        media="application/json",
        media_schema=ref("OpenApiDocument"),
        description="This document (OpenAPI 3.1).",
    ),
    ("GET", "/docs"): OpDoc(
        "getDocs",
        "Documentation",
        media="text/html",
        media_schema={"type": "string"},
        description="A self-contained HTML rendering of this document.",
    ),
}

__all__ = [
    "DEFAULT_TTL_MAX_SECONDS",
    "ERROR_CODE_PATTERN",
    "OPERATIONS",
    "OpDoc",
    "Param",
    "component_schemas",
    "page_of",
    "ref",
]
