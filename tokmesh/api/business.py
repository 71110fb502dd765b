"""Business routes (03 §3): thin adapters from HTTP to the session operations.

They parse and check the request shape (03 owns HTTP: strict bodies, the 1..max TTL
range), call exactly one service function and render the envelope.
"""

from __future__ import annotations

from typing import Any

from tokmesh.api.envelope import check_str_map, int_param, ok, parse_body
from tokmesh.api.http_types import Deferred, HttpRequest, HttpResponse
from tokmesh.api.routes import SCOPE_BUSINESS, Call, Route
from tokmesh.domain import apikey as ak
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.services.session_ops import CreateResult, ListQuery, SessionOperations
from tokmesh.services.sessions import trim_fields

TOUCH_FIELDS = ("id", "user_id", "expires_at", "last_active", "version")


def _svc(call: Call) -> SessionOperations:
    svc = call.deps.sessions
    if svc is None:
        raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready")
    return svc


def _ttl_range(call: Call, value: int | None, *, required: bool) -> int | None:
    """03 §3.3/§3.4: a given ``ttl_seconds`` must be 1..``session.ttl.max``."""
    if value is None:
        if required:
            raise TokMeshError(E.ARG_MISSING, "ttl_seconds is required", {"field": "ttl_seconds"})
        return None
    max_s = _svc(call).settings.ttl_max_ms // 1000
    if value < 1 or value > max_s:
        raise TokMeshError(
            E.ARG_INVALID,
            f"ttl_seconds must be between 1 and {max_s}",
            {"field": "ttl_seconds", "max": max_s},
        )
    return value


CREATE_SCHEMA: dict[str, Any] = {
    "user_id": (str, True),
    "device_id": (str, False),
    "ttl_seconds": (int, False),
    "data": (dict, False),
    "token": (str, False),
    "idle_timeout_seconds": (int, False),
}


async def create_session(call: Call) -> HttpResponse:
    """``POST /sessions`` → 201 ``{session_id, token, expires_at, session}``."""
    res = await _svc(call).create(call.context(), **_create_args(call))
    return _created(call, res)


def create_session_now(call: Call) -> Deferred | None:
    """:func:`create_session` answered when its commit lands (the mux's write path)."""
    later = Deferred()
    args = _create_args(call)
    if not _svc(call).create_now(
        call.context(),
        then=lambda res: later.resolve(_created(call, res)),
        failed=later.resolve,
        **args,
    ):
        return None
    return later


def _create_args(call: Call) -> dict[str, Any]:
    body = parse_body(call.req.body, CREATE_SCHEMA)
    return {
        "user_id": body.get("user_id"),
        "device_id": body.get("device_id"),
        "data": check_str_map(body.get("data"), "data"),
        "ttl_seconds": _ttl_range(call, body.get("ttl_seconds"), required=False),
        "token": body.get("token"),
        "idle_timeout_seconds": body.get("idle_timeout_seconds"),
    }


def _created(call: Call, res: CreateResult) -> HttpResponse:
    s = res.session
    return ok(
        call.rid,
        {
            "session_id": s.id,
            "token": res.token,
            "expires_at": s.expires_at,
            "session": s.to_public(),
        },
        status=201,
    )


def get_session(call: Call) -> HttpResponse:
    """``GET /sessions/{id}``: pure read."""
    s = _svc(call).get(call.params["session_id"])
    return ok(call.rid, trim_fields(s.to_public(), call.query.get("fields"), ("id",)))


async def touch_session(call: Call) -> HttpResponse:
    """``POST /sessions/{id}/touch``: body must be empty or ``{}``."""
    parse_body(call.req.body, {})
    s = await _svc(call).touch(call.context(), call.params["session_id"])
    return ok(call.rid, trim_fields(s.to_public(), call.query.get("fields"), TOUCH_FIELDS))


async def renew_session(call: Call) -> HttpResponse:
    """``POST /sessions/{id}/renew`` → ``{new_expires_at}``."""
    ttl, expected = _renew_args(call)
    s = await _svc(call).renew(call.context(), call.params["session_id"], ttl, expected)
    return _renewed(call, s)


def renew_session_now(call: Call) -> Deferred | None:
    """:func:`renew_session` answered when its commit lands."""
    ttl, expected = _renew_args(call)
    later = Deferred()
    if not _svc(call).renew_now(
        call.context(),
        call.params["session_id"],
        ttl,
        expected,
        lambda s: later.resolve(_renewed(call, s)),
        later.resolve,
    ):
        return None
    return later


def _renew_args(call: Call) -> tuple[int | None, int | None]:
    body = parse_body(call.req.body, {"ttl_seconds": (int, True), "expected_version": (int, False)})
    return _ttl_range(call, body.get("ttl_seconds"), required=True), body.get("expected_version")


def _renewed(call: Call, s: Session) -> HttpResponse:
    return ok(call.rid, {"new_expires_at": s.expires_at, "version": s.version})


async def revoke_session(call: Call) -> HttpResponse:
    """``POST /sessions/{id}/revoke``: idempotent ``{success: true}``."""
    body = parse_body(call.req.body, {"sync": (bool, False)})
    await _svc(call).revoke(call.context(), call.params["session_id"], sync=bool(body.get("sync")))
    return ok(call.rid, {"success": True})


def revoke_session_now(call: Call) -> Deferred | None:
    """:func:`revoke_session` answered when its commit lands (not for ``sync``)."""
    body = parse_body(call.req.body, {"sync": (bool, False)})
    if body.get("sync"):
        return None  # waits for every node: the awaiting path
    later = Deferred()
    if not _svc(call).revoke_now(
        call.context(),
        call.params["session_id"],
        lambda _done: later.resolve(ok(call.rid, {"success": True})),
        later.resolve,
    ):
        return None
    return later


async def revoke_user(call: Call) -> HttpResponse:
    """``POST /users/{user_id}/sessions/revoke`` → ``{revoked_count}``."""
    body = parse_body(call.req.body, {"sync": (bool, False), "except_session_id": (str, False)})
    n = await _svc(call).revoke_user(
        call.context(),
        call.params["user_id"],
        body.get("except_session_id"),
        sync=bool(body.get("sync")),
    )
    return ok(call.rid, {"revoked_count": n})


VALIDATE_SCHEMA: dict[str, Any] = {"token": (str, True), "touch": (bool, False)}


async def validate_token(call: Call) -> HttpResponse:
    """``POST /tokens/validate`` → ``{valid: true, session}`` or the token error (R6)."""
    body = parse_body(call.req.body, VALIDATE_SCHEMA)
    if not body.get("touch"):
        return _validated(call, _svc(call).validate(body["token"]))
    return _validated(call, await _svc(call).validate_touch(call.context(), body["token"]))


def validate_token_now(call: Call) -> HttpResponse:
    """:func:`validate_token` for a body that cannot ask for ``touch`` (see below)."""
    body = parse_body(call.req.body, VALIDATE_SCHEMA)
    if body.get("touch"):  # pragma: no cover - excluded by cannot_touch
        raise TokMeshError(E.SYS_INTERNAL, "touch reached the non-waiting validate")
    return _validated(call, _svc(call).validate(body["token"]))


def cannot_touch(req: HttpRequest) -> bool:
    """True when the validate body cannot hold a true ``touch`` (it would have to wait).

    JSON can spell a key only literally or with ``\\u`` escapes, so a body without
    ``touch`` and without ``\\u`` has no ``touch`` field; anything else takes the
    awaiting path, which handles both cases.
    """
    body = req.body
    return b"touch" not in body and b"\\u" not in body


def _validated(call: Call, s: Session) -> HttpResponse:
    return ok(call.rid, {"valid": True, "session": s.to_public()})


def _time_param(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise TokMeshError(E.ARG_INVALID, f"{name} must be Unix ms or RFC 3339") from None


def list_sessions(call: Call) -> HttpResponse:
    """``GET /sessions``: issuer must filter by ``user_id``; admin may list everything."""
    q = call.query
    user_id = q.get("user_id") or None
    principal = call.principal
    if principal is not None and principal.role != ak.ROLE_ADMIN and user_id is None:
        raise TokMeshError(E.AUTH_FORBIDDEN, "issuer keys must filter by user_id")
    page = int_param(q, "page", 1, 1)
    size = int_param(q, "size", 20, 1, 100)
    end = _time_param(q, "time_range_end")
    active_after = _time_param(q, "active_after")
    res = _svc(call).list_sessions(
        ListQuery(
            user_id=user_id,
            device_id=q.get("device_id") or None,
            key_id=(q.get("key_id") or "").lower() or None,
            ip_address=q.get("ip_address") or None,
            created_after=_time_param(q, "time_range_start"),
            created_before=end + 1 if end is not None else None,
            active_after=active_after + 1 if active_after is not None else None,
            status=q.get("status") or "active",
            sort_by=q.get("sort_by") or "created_at",
            sort_order=q.get("sort_order") or "desc",
            page=page,
            size=size,
        )
    )
    fields = q.get("fields")
    items = [trim_fields(s.to_public(), fields, ("id",)) for s in res.items]
    return ok(call.rid, {"items": items, "total_items": res.total, "page": page, "size": size})


def business_routes() -> list[Route]:
    """The routes of 03 §3.2 (all served inline by the native front)."""
    b = SCOPE_BUSINESS
    return [
        Route(
            "POST",
            "/sessions",
            create_session,
            b,
            ak.PERM_SESSION_CREATE,
            True,
            "Create a session",
            success_status=201,
            now=create_session_now,
        ),
        Route("GET", "/sessions", list_sessions, b, ak.PERM_SESSION_LIST, True, "List sessions"),
        Route(
            "GET",
            "/sessions/{session_id}",
            get_session,
            b,
            ak.PERM_SESSION_READ,
            True,
            "Get a session",
        ),
        Route(
            "POST",
            "/sessions/{session_id}/touch",
            touch_session,
            b,
            ak.PERM_SESSION_TOUCH,
            True,
            "Touch a session",
        ),
        Route(
            "POST",
            "/sessions/{session_id}/renew",
            renew_session,
            b,
            ak.PERM_SESSION_RENEW,
            True,
            "Renew a session",
            now=renew_session_now,
        ),
        Route(
            "POST",
            "/sessions/{session_id}/revoke",
            revoke_session,
            b,
            ak.PERM_SESSION_REVOKE,
            True,
            "Revoke a session",
            now=revoke_session_now,
        ),
        Route(
            "POST",
            "/users/{user_id}/sessions/revoke",
            revoke_user,
            b,
            ak.PERM_SESSION_REVOKE_USER,
            True,
            "Revoke all sessions of a user",
        ),
        Route(
            "POST",
            "/tokens/validate",
            validate_token,
            b,
            ak.PERM_TOKEN_VALIDATE,
            True,
            "Validate a token",
            now=validate_token_now,
            now_if=cannot_touch,
            # A read on every gateway request, not a business write: counted in metrics,
            # not written to the audit log (docs/decisions.md).
            audited=False,
        ),
    ]
