"""The one error catalogue of TokMesh (spec 02 §19 plus ruling R7).

Every front end (HTTP, RESP, admin socket, CLI) maps failures through this module, so the
same situation carries the same code everywhere. Codes are never written as ad-hoc strings
elsewhere: refer to the constants (``E.SESS_NOT_FOUND``) or :func:`lookup`.
"""

from __future__ import annotations

from typing import Any, Final

import attrs


@attrs.frozen(slots=True)
class ErrorCode:
    """One catalogue entry: the wire code, its HTTP status and a default message."""

    code: str
    http_status: int
    message: str

    def __str__(self) -> str:
        return self.code


class TokMeshError(Exception):
    """A failure with a catalogue code; front ends render it, never re-interpret it.

    ``details`` is a small JSON-able dict (never secrets); ``headers`` are extra HTTP
    headers the condition demands (``Retry-After`` for 4290/4091).
    """

    __slots__ = ("details", "error", "headers", "message")

    def __init__(
        self,
        error: ErrorCode,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.error = error
        self.message = message if message is not None else error.message
        self.details = details
        self.headers = headers
        super().__init__(f"{error.code} {self.message}")

    @property
    def code(self) -> str:
        """The wire code, e.g. ``TM-SESS-4040``."""
        return self.error.code

    @property
    def http_status(self) -> int:
        """The HTTP status of the code (02 §19.2 / 03 §2.12)."""
        return self.error.http_status


_CATALOGUE: dict[str, ErrorCode] = {}


def _c(code: str, status: int, message: str) -> ErrorCode:
    entry = ErrorCode(code, status, message)
    _CATALOGUE[code] = entry
    return entry


class E:
    """Namespace of every server and CLI code (02 §19.2, §19.3, R7)."""

    # SYS
    SYS_BAD_REQUEST: Final = _c("TM-SYS-4000", 400, "invalid request body")
    SYS_NOT_FOUND: Final = _c("TM-SYS-4040", 404, "route not found")
    SYS_METHOD_NOT_ALLOWED: Final = _c("TM-SYS-4050", 405, "method not allowed")
    SYS_RATE_LIMITED: Final = _c("TM-SYS-4290", 429, "rate limit exceeded")
    SYS_INTERNAL: Final = _c("TM-SYS-5000", 500, "internal error")
    SYS_STORAGE: Final = _c("TM-SYS-5001", 500, "storage failure")
    SYS_BACKUP: Final = _c("TM-SYS-5002", 500, "backup or restore failed")
    SYS_NOT_IMPLEMENTED: Final = _c("TM-SYS-5010", 501, "not implemented")
    SYS_UNAVAILABLE: Final = _c("TM-SYS-5030", 503, "service not ready")
    # AUTH
    AUTH_MISSING: Final = _c("TM-AUTH-4010", 401, "authentication required")
    AUTH_INVALID: Final = _c("TM-AUTH-4011", 401, "invalid api key")
    AUTH_DISABLED: Final = _c("TM-AUTH-4012", 401, "api key disabled")
    AUTH_SIGNATURE: Final = _c("TM-AUTH-4013", 401, "signature verification failed")
    AUTH_TIMESTAMP: Final = _c("TM-AUTH-4014", 401, "timestamp missing or outside window")
    AUTH_NONCE_REUSED: Final = _c("TM-AUTH-4015", 401, "nonce already used")
    AUTH_FORBIDDEN: Final = _c("TM-AUTH-4030", 403, "permission denied")
    AUTH_IP_DENIED: Final = _c("TM-AUTH-4031", 403, "client ip not allowed")
    # SESS
    SESS_INVALID: Final = _c("TM-SESS-4001", 400, "session validation failed")
    SESS_QUOTA: Final = _c("TM-SESS-4002", 429, "session quota exceeded")
    SESS_NOT_FOUND: Final = _c("TM-SESS-4040", 404, "session not found")
    SESS_EXPIRED: Final = _c("TM-SESS-4041", 404, "session expired")
    SESS_EXISTS: Final = _c("TM-SESS-4090", 409, "session id already exists")
    SESS_CONFLICT: Final = _c("TM-SESS-4091", 409, "version conflict, retry")
    # TOKN
    TOKN_MALFORMED: Final = _c("TM-TOKN-4000", 400, "malformed token")
    TOKN_INVALID: Final = _c("TM-TOKN-4010", 401, "token invalid")
    TOKN_EXPIRED: Final = _c("TM-TOKN-4011", 401, "token expired")
    TOKN_REVOKED: Final = _c("TM-TOKN-4012", 401, "token revoked")
    TOKN_EXISTS: Final = _c("TM-TOKN-4090", 409, "token already in use")
    # CLST
    CLST_NODE_CONFLICT: Final = _c("TM-CLST-4090", 409, "node id conflict")
    CLST_NO_NODES: Final = _c("TM-CLST-5030", 503, "no available nodes")
    CLST_TIMEOUT: Final = _c("TM-CLST-5040", 504, "cluster operation timed out")
    CLST_INCONSISTENT: Final = _c("TM-CLST-5050", 500, "data inconsistency")
    # CFG
    CFG_TYPE: Final = _c("TM-CFG-1001", 400, "config type error")
    CFG_RANGE: Final = _c("TM-CFG-1002", 400, "config value out of range")
    CFG_FILE_MISSING: Final = _c("TM-CFG-1003", 400, "referenced file does not exist")
    CFG_PERMISSION: Final = _c("TM-CFG-1004", 400, "file permission error")
    CFG_CONFLICT: Final = _c("TM-CFG-1005", 400, "config logical conflict")
    CFG_DEPENDENCY: Final = _c("TM-CFG-1006", 400, "config missing dependency")
    CFG_BAD_PEM: Final = _c("TM-CFG-1007", 400, "certificate is not valid PEM")
    CFG_CERT_EXPIRED: Final = _c("TM-CFG-1008", 400, "certificate expired")
    # ARG
    ARG_INVALID: Final = _c("TM-ARG-1001", 400, "invalid argument")
    ARG_MISSING: Final = _c("TM-ARG-1002", 400, "required argument missing")
    ARG_CONFLICT: Final = _c("TM-ARG-1003", 400, "conflicting arguments")
    # ADMIN
    ADMIN_FORBIDDEN: Final = _c("TM-ADMIN-4030", 403, "admin role required")
    ADMIN_IP_DENIED: Final = _c("TM-ADMIN-4031", 403, "client ip not allowed")
    ADMIN_NOT_FOUND: Final = _c("TM-ADMIN-4041", 404, "resource not found")
    ADMIN_CONFLICT: Final = _c("TM-ADMIN-4091", 409, "conflicting admin operation")
    ADMIN_TOO_LARGE: Final = _c("TM-ADMIN-4130", 413, "payload too large")
    ADMIN_UNPROCESSABLE: Final = _c("TM-ADMIN-4221", 422, "payload unprocessable")
    ADMIN_THROTTLED: Final = _c("TM-ADMIN-4291", 429, "admin operation throttled")
    ADMIN_FAILED: Final = _c("TM-ADMIN-5001", 500, "admin operation failed")
    ADMIN_MAINTENANCE: Final = _c("TM-ADMIN-5031", 503, "service unavailable: restore in progress")
    # CLI (status = process exit code, 02 §19.3)
    CLI_CONFIG: Final = _c("TM-CLI-1001", 78, "CLI config file failed to load")
    CLI_UNREACHABLE: Final = _c("TM-CLI-1002", 69, "cannot connect to target node")
    CLI_TLS: Final = _c("TM-CLI-1003", 69, "TLS handshake or certificate verification failed")
    CLI_AUTH: Final = _c("TM-CLI-1004", 1, "authentication failed")
    CLI_USAGE: Final = _c("TM-CLI-1005", 64, "missing or invalid command arguments")
    CLI_TIMEOUT: Final = _c("TM-CLI-1006", 69, "operation timed out")
    CLI_SERIALIZE: Final = _c("TM-CLI-1007", 65, "output could not be serialized")


def lookup(code: str) -> ErrorCode:
    """Return the catalogue entry for ``code``; raises ``KeyError`` for unknown codes."""
    return _CATALOGUE[code]


def all_codes() -> dict[str, ErrorCode]:
    """A copy of the whole catalogue, keyed by wire code."""
    return dict(_CATALOGUE)
