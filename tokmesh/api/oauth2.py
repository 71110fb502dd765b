"""OAuth 2.0 token introspection (RFC 7662) and revocation (RFC 7009) for API gateways.

Gateways with an introspection plugin ask an authorization server "is this bearer token
active, and whose is it?" with a form-encoded ``POST``, authenticating as an OAuth
client. These two routes let them ask TokMesh as it is: the client is an API key
(``client_id`` = key id, ``client_secret`` = key secret, sent as HTTP Basic, or as
TokMesh's own ``Authorization: Bearer <key_id>:<secret>``), the token is a session token.

Everything else is the pipeline every business route runs (readiness, brute-force guard,
key cache, rate limit, role, anti-replay, maintenance gate, audit, metrics) and the
session operations every front calls, so cluster forwarding, the WAL, audit records and
session events apply unchanged. Only three things differ from the TokMesh routes:

* credentials may come as HTTP Basic, their two parts form-urlencoded first
  (RFC 6749 §2.3.1), read by :func:`oauth_credentials`;
* the body is ``application/x-www-form-urlencoded``, read by :func:`parse_form`;
* answers are the RFC's bare JSON documents and errors are RFC 6749 §5.2 bodies
  ``{"error", "error_description"}`` (:func:`oauth_failure`), never the envelope.

Introspection reads without waiting (no touch, by RFC 7662's nature: asking about a token
is not using it), so the HTTP multiplexer answers it inline when the key is cached, as it
answers ``POST /tokens/validate``.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote_plus

import orjson

from tokmesh.api.http_types import HttpRequest, HttpResponse
from tokmesh.api.routes import SCOPE_BUSINESS, Call, Route
from tokmesh.domain import apikey
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.services.auth import parse_credentials
from tokmesh.services.session_ops import SessionOperations

INTROSPECT_PATH: Final = "/oauth2/introspect"
REVOKE_PATH: Final = "/oauth2/revoke"
FORM_MEDIA: Final = "application/x-www-form-urlencoded"
_FORM_MEDIA_BYTES: Final = FORM_MEDIA.encode()
#: the realm of the ``WWW-Authenticate`` challenge on every 401
REALM: Final = "tokmesh"

#: The token errors of the session operations. To an OAuth client each only means "this
#: token is not active": introspection answers ``{"active": false}`` and revocation 200.
INACTIVE: Final = frozenset({E.TOKN_MALFORMED, E.TOKN_INVALID, E.TOKN_EXPIRED, E.TOKN_REVOKED})

_NO_STORE: Final = ("Cache-Control", "no-store")
_JSON: Final = ("Content-Type", "application/json")
_INACTIVE_BODY: Final = orjson.dumps({"active": False})


# --- credentials ------------------------------------------------------------------------------


def decode_basic(value: str) -> tuple[str, str]:
    """``(client_id, client_secret)`` from the part of ``Authorization: Basic`` after the
    scheme.

    RFC 6749 §2.3.1 has clients form-urlencode both before joining them with ``:`` and
    base64-encoding the pair, so both are form-decoded here (``%XX`` and ``+``). Anything
    that is not such a pair gives ``("", "")``, which the authenticator refuses as
    malformed credentials and counts as a failed authentication, like a malformed Bearer.
    """
    try:
        # strict: any character outside the base64 alphabet or misplaced padding fails
        raw = binascii.a2b_base64(value.strip(), strict_mode=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "", ""
    client_id, sep, secret = raw.partition(":")
    if not sep:
        return "", ""
    if "%" not in raw and "+" not in raw:
        return client_id, secret  # nothing encoded: what every key looks like
    try:
        return unquote_plus(client_id, errors="strict"), unquote_plus(secret, errors="strict")
    except UnicodeDecodeError:
        return "", ""


def oauth_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The caller's API key: HTTP Basic as OAuth clients send it, else every form
    :func:`~tokmesh.services.auth.parse_credentials` reads (Bearer, ``X-API-Key``)."""
    auth = headers.get("authorization")
    if auth is not None and auth[:6].lower() == "basic ":
        return decode_basic(auth[6:])
    return parse_credentials(headers)


# --- the form body ----------------------------------------------------------------------------


def _form_decode(text: str) -> str:
    # Most values (tokens, key ids) have nothing to decode; skip the call for them.
    if "%" in text or "+" in text:
        return unquote_plus(text, errors="strict")
    return text


def _bad_request(message: str) -> TokMeshError:
    return TokMeshError(E.SYS_BAD_REQUEST, message)


def check_form_media(content_type: bytes | None) -> None:
    """``TM-SYS-4000`` unless the body is declared ``application/x-www-form-urlencoded``
    (in UTF-8, when a charset is named at all)."""
    if content_type == _FORM_MEDIA_BYTES:
        return  # what every gateway sends: nothing to split
    if content_type is None:
        raise _bad_request(f"Content-Type must be {FORM_MEDIA}")
    media, *params = content_type.decode("latin-1").split(";")
    if media.strip().lower() != FORM_MEDIA:
        raise _bad_request(f"Content-Type must be {FORM_MEDIA}")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            raise _bad_request("the form must be encoded in UTF-8")


def parse_form(body: bytes) -> dict[str, str]:
    """The parameters of a form-urlencoded body, decoded (``TM-SYS-4000`` when malformed).

    RFC 6749 §3.2 rules, which RFC 7662 and RFC 7009 inherit: a parameter sent without a
    value counts as omitted (it is left out here), and no parameter may be sent twice
    (a duplicate is refused, known parameter or not, so two readings of one request can
    never disagree). A piece without ``=`` is a name with an empty value, as browsers
    read it. Bytes that are not UTF-8 once decoded are refused.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_request("the form body is not UTF-8") from None
    # A gateway's form (a token and a hint) has nothing to decode: then no piece is
    # decoded one by one, which is most of the cost on the introspection path.
    plain = "%" not in text and "+" not in text
    out: dict[str, str] = {}
    empty: set[str] = set()
    for piece in text.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        if not plain:
            try:
                name = _form_decode(name)
                value = _form_decode(value)
            except UnicodeDecodeError:
                raise _bad_request("a form parameter is not UTF-8 once decoded") from None
        if name in out or name in empty:
            raise _bad_request(f"parameter {name!r} is sent more than once")
        if value:
            out[name] = value
        else:
            empty.add(name)
    return out


def read_token(req: HttpRequest) -> str:
    """The ``token`` parameter of an OAuth request (``token_type_hint`` is only a hint: a
    TokMesh token is always a session token, so any hint, supported or not, is ignored
    as RFC 7009 §2.1 and RFC 7662 §2.1 allow)."""
    check_form_media(req.get_header(b"content-type"))
    token = parse_form(req.body).get("token")
    if token is None:
        raise TokMeshError(E.ARG_MISSING, "token is required", {"field": "token"})
    return token


# --- answers ----------------------------------------------------------------------------------


def introspection(s: Session) -> dict[str, object]:
    """The RFC 7662 §2.2 members of an active token's answer.

    Times are Unix *seconds* there (JWT NumericDate), unlike TokMesh's milliseconds.
    ``exp`` is the instant the session ends whichever way comes first (its absolute
    expiry or its idle timeout as of now); it is left out for a session that never ends.
    Nothing about the token itself (nor its hash) or the session's ``data`` is included.
    """
    doc: dict[str, object] = {
        "active": True,
        "sub": s.user_id,
        "client_id": s.created_by,
        "token_type": "Bearer",
        "iat": s.created_at // 1000,
        "sid": s.id,
    }
    end = s.effective_expiry()
    if end:
        doc["exp"] = end // 1000
    return doc


def _answer(call: Call, body: bytes) -> HttpResponse:
    return HttpResponse(200, [_JSON, _NO_STORE, ("X-Request-ID", call.rid)], body)


#: RFC 6749 §5.2 error codes by the HTTP status of the TokMesh error behind them.
_OAUTH_ERRORS: Final = {
    400: "invalid_request",
    401: "invalid_client",
    403: "unauthorized_client",
    429: "temporarily_unavailable",
    503: "temporarily_unavailable",
    504: "temporarily_unavailable",
}


def oauth_failure(req: HttpRequest, rid: str, exc: TokMeshError) -> HttpResponse:
    """An RFC 6749 §5.2 error answer for a TokMesh error raised while serving ``req``.

    The status stays the TokMesh one and ``X-Error-Code`` names the TokMesh code, so logs,
    metrics and the error catalogue hold; the body is what OAuth clients parse. A 401
    carries the challenge RFC 6749 §5.2 demands, in the scheme the client used (Basic
    unless it sent a Bearer credential).
    """
    status = exc.http_status
    error = _OAUTH_ERRORS.get(status, "server_error")
    headers = [_JSON, _NO_STORE, ("X-Request-ID", rid), ("X-Error-Code", exc.error.code)]
    if exc.headers:
        headers.extend(exc.headers.items())
    if status == 401:
        auth = req.get_header(b"authorization") or b""
        scheme = "Bearer" if auth.strip()[:7].lower() == b"bearer " else "Basic"
        headers.append(("WWW-Authenticate", f'{scheme} realm="{REALM}"'))
    body = orjson.dumps({"error": error, "error_description": exc.message})
    return HttpResponse(status, headers, body)


# --- routes -----------------------------------------------------------------------------------


def _svc(call: Call) -> SessionOperations:
    svc = call.deps.sessions
    if svc is None:
        raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready")
    return svc


def introspect(call: Call) -> HttpResponse:
    """``POST /oauth2/introspect``: the token's RFC 7662 answer, ``{"active": false}``
    for every token that is not live; never touches the session."""
    token = read_token(call.req)
    try:
        s = _svc(call).validate(token)
    except TokMeshError as exc:
        if exc.error in INACTIVE:
            return _answer(call, _INACTIVE_BODY)
        raise
    return _answer(call, orjson.dumps(introspection(s)))


async def revoke(call: Call) -> HttpResponse:
    """``POST /oauth2/revoke``: revoke the token's session (the session revoke every front
    uses, waiting until no node accepts it); 200 with an empty body either way."""
    token = read_token(call.req)
    svc = _svc(call)
    try:
        s = svc.validate(token)
    except TokMeshError as exc:
        # RFC 7009 §2.2: an invalid token is no error, the client can do nothing about it.
        if exc.error not in INACTIVE:
            raise
    else:
        # An OAuth client cannot ask for ``sync``; a revocation that returned before every
        # node refused the token would surprise the gateway that asked for it.
        await svc.revoke(call.context(), s.id, sync=True)
    return HttpResponse(200, [_NO_STORE, ("X-Request-ID", call.rid)], b"")


def oauth2_routes() -> list[Route]:
    """``POST /oauth2/introspect`` and ``POST /oauth2/revoke`` (both served inline by the
    native front; introspection without a task switch when the key is cached)."""
    return [
        Route(
            "POST",
            INTROSPECT_PATH,
            introspect,
            SCOPE_BUSINESS,
            apikey.PERM_TOKEN_VALIDATE,
            hot=True,
            summary="Introspect a token (OAuth 2.0, RFC 7662)",
            # A read on every gateway request, like /tokens/validate: not audited.
            audited=False,
            credentials=oauth_credentials,
            failure=oauth_failure,
        ),
        Route(
            "POST",
            REVOKE_PATH,
            revoke,
            SCOPE_BUSINESS,
            apikey.PERM_SESSION_REVOKE,
            hot=True,
            summary="Revoke a token (OAuth 2.0, RFC 7009)",
            credentials=oauth_credentials,
            failure=oauth_failure,
        ),
    ]


__all__ = [
    "INACTIVE",
    "check_form_media",
    "decode_basic",
    "introspect",
    "introspection",
    "oauth2_routes",
    "oauth_credentials",
    "oauth_failure",
    "parse_form",
    "read_token",
    "revoke",
]
