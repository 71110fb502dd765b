"""The pure parts of the OAuth 2.0 routes: HTTP Basic credentials, the form body, the
error mapping and the introspection members (no server, no sockets)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from tokmesh.api.http_types import HttpRequest
from tokmesh.api.oauth2 import (
    check_form_media,
    decode_basic,
    introspection,
    oauth2_routes,
    oauth_credentials,
    oauth_failure,
    parse_form,
    read_token,
)
from tokmesh.domain.errors import E, ErrorCode, TokMeshError
from tokmesh.domain.session import Session

KEY_ID = "tmak-01jq0000000000000000000000"
SECRET = "tmas_AbCdEf0123456789"


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# --- HTTP Basic -------------------------------------------------------------------------------


def test_basic_plain_pair() -> None:
    assert decode_basic(_basic(KEY_ID, SECRET)) == (KEY_ID, SECRET)


def test_basic_parts_are_form_decoded() -> None:
    # RFC 6749 §2.3.1: each part is form-urlencoded before the pair is base64-encoded,
    # so %XX escapes and "+" (a space) are undone, and an encoded ":" stays in its part.
    raw = _basic("tmak%2D01jq0000000000000000000000", "tmas_a%3Ab+c%25")
    assert decode_basic(raw) == (KEY_ID, "tmas_a:b c%")


def test_basic_splits_at_the_first_colon_only() -> None:
    assert decode_basic(_basic("id", "se:cret")) == ("id", "se:cret")


@pytest.mark.parametrize(
    "value",
    [
        "not base64!",
        base64.b64encode(b"no-colon-here").decode(),
        base64.b64encode(b"\xff\xfe:x").decode(),  # not UTF-8
        _basic("id", "%C3%28"),  # a %-escape that decodes to invalid UTF-8
        "",
    ],
)
def test_malformed_basic_is_an_empty_credential(value: str) -> None:
    # ("", "") is refused by the authenticator as malformed and counted as a failure.
    assert decode_basic(value) == ("", "")


def test_credentials_prefer_basic_and_fall_back_to_the_usual_headers() -> None:
    assert oauth_credentials({"authorization": "Basic " + _basic(KEY_ID, SECRET)}) == (
        KEY_ID,
        SECRET,
    )
    assert oauth_credentials({"authorization": "basic  " + _basic(KEY_ID, SECRET)}) == (
        KEY_ID,
        SECRET,
    )
    assert oauth_credentials({"authorization": f"Bearer {KEY_ID}:{SECRET}"}) == (KEY_ID, SECRET)
    assert oauth_credentials({"x-api-key": f"{KEY_ID}:{SECRET}"}) == (KEY_ID, SECRET)
    assert oauth_credentials({}) is None


# --- the form body ----------------------------------------------------------------------------


def test_form_is_decoded() -> None:
    body = b"token=tmtk_abc%2Bdef&token_type_hint=access_token&x=a+b"
    assert parse_form(body) == {
        "token": "tmtk_abc+def",
        "token_type_hint": "access_token",
        "x": "a b",
    }


def test_empty_values_count_as_omitted() -> None:
    assert parse_form(b"token=&token_type_hint=access_token&flag") == {
        "token_type_hint": "access_token"
    }
    assert parse_form(b"") == {}
    assert parse_form(b"&&token=t&") == {"token": "t"}


@pytest.mark.parametrize(
    "body",
    [
        b"token=a&token=b",
        b"token=a&token_type_hint=x&token_type_hint=y",
        b"token=a&client_id=x&client_id=x",  # an unknown parameter twice too
        b"to%6Ben=a&token=b",  # the same name, once escaped
    ],
)
def test_duplicate_parameters_are_refused(body: bytes) -> None:
    with pytest.raises(TokMeshError) as caught:
        parse_form(body)
    assert caught.value.error is E.SYS_BAD_REQUEST
    assert "more than once" in caught.value.message


@pytest.mark.parametrize("body", [b"token=\xff\xfe", b"token=%ff%fe", b"%C3%28=x"])
def test_non_utf8_forms_are_refused(body: bytes) -> None:
    with pytest.raises(TokMeshError) as caught:
        parse_form(body)
    assert caught.value.error is E.SYS_BAD_REQUEST


@pytest.mark.parametrize(
    "value",
    [
        b"application/x-www-form-urlencoded",
        b"Application/X-WWW-Form-URLEncoded",
        b"application/x-www-form-urlencoded; charset=UTF-8",
        b'application/x-www-form-urlencoded;charset="utf-8"',
    ],
)
def test_form_media_accepted(value: bytes) -> None:
    check_form_media(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"application/json",
        b"multipart/form-data; boundary=x",
        b"application/x-www-form-urlencoded; charset=latin-1",
        b"text/plain",
    ],
)
def test_form_media_refused(value: bytes | None) -> None:
    with pytest.raises(TokMeshError) as caught:
        check_form_media(value)
    assert caught.value.error is E.SYS_BAD_REQUEST


def _request(
    body: bytes, content_type: bytes | None = b"application/x-www-form-urlencoded"
) -> HttpRequest:
    headers = [(b"content-type", content_type)] if content_type is not None else []
    return HttpRequest("POST", "/oauth2/introspect", "", headers, body)


def test_read_token() -> None:
    assert read_token(_request(b"token=tmtk_x&token_type_hint=refresh_token")) == "tmtk_x"
    with pytest.raises(TokMeshError) as caught:
        read_token(_request(b"token_type_hint=access_token"))
    assert caught.value.error is E.ARG_MISSING
    with pytest.raises(TokMeshError) as caught:
        read_token(_request(b'{"token": "tmtk_x"}', b"application/json"))
    assert caught.value.error is E.SYS_BAD_REQUEST


# --- answers ----------------------------------------------------------------------------------


def _error(
    exc: TokMeshError, authorization: bytes | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = [(b"authorization", authorization)] if authorization else []
    req = HttpRequest("POST", "/oauth2/revoke", "", headers, b"")
    resp = oauth_failure(req, "req-1", exc)
    return resp.status, dict(resp.headers), orjson.loads(resp.body)


@pytest.mark.parametrize(
    ("error", "status", "oauth"),
    [
        (E.SYS_BAD_REQUEST, 400, "invalid_request"),
        (E.ARG_MISSING, 400, "invalid_request"),
        (E.AUTH_MISSING, 401, "invalid_client"),
        (E.AUTH_INVALID, 401, "invalid_client"),
        (E.AUTH_DISABLED, 401, "invalid_client"),
        (E.AUTH_FORBIDDEN, 403, "unauthorized_client"),
        (E.AUTH_IP_DENIED, 403, "unauthorized_client"),
        (E.SYS_RATE_LIMITED, 429, "temporarily_unavailable"),
        (E.SYS_UNAVAILABLE, 503, "temporarily_unavailable"),
        (E.CLST_TIMEOUT, 504, "temporarily_unavailable"),
        (E.SYS_INTERNAL, 500, "server_error"),
    ],
)
def test_errors_map_to_rfc6749(error: ErrorCode, status: int, oauth: str) -> None:
    got_status, headers, body = _error(TokMeshError(error))
    assert got_status == status == error.http_status
    assert body == {"error": oauth, "error_description": error.message}
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Error-Code"] == error.code
    assert headers["X-Request-ID"] == "req-1"
    assert ("WWW-Authenticate" in headers) == (status == 401)


def test_challenge_follows_the_scheme_the_client_used() -> None:
    exc = TokMeshError(E.AUTH_INVALID)
    assert _error(exc)[1]["WWW-Authenticate"] == 'Basic realm="tokmesh"'
    assert _error(exc, b"Basic eDp5")[1]["WWW-Authenticate"] == 'Basic realm="tokmesh"'
    assert _error(exc, b"Bearer a:b")[1]["WWW-Authenticate"] == 'Bearer realm="tokmesh"'


def test_error_keeps_the_condition_headers() -> None:
    exc = TokMeshError(E.SYS_RATE_LIMITED, headers={"Retry-After": "1"})
    assert _error(exc)[1]["Retry-After"] == "1"


def _session(**changes: object) -> Session:
    fields: dict[str, object] = {
        "id": "tmss-01jq0000000000000000000001",
        "user_id": "alice",
        "token_hash": b"\0" * 32,
        "created_by": KEY_ID,
        "created_at": 1_700_000_000_123,
        "expires_at": 1_700_003_600_999,
        "last_active": 1_700_000_500_000,
        "data": {"secret": "x"},
        "device_id": "phone",
    }
    fields.update(changes)
    return Session(**fields)  # type: ignore[arg-type]


def test_introspection_members() -> None:
    assert introspection(_session()) == {
        "active": True,
        "sub": "alice",
        "client_id": KEY_ID,
        "token_type": "Bearer",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
        "sid": "tmss-01jq0000000000000000000001",
    }


def test_introspection_exp_is_the_idle_end_when_it_comes_first() -> None:
    s = _session(idle_timeout=600_000)
    assert introspection(s)["exp"] == (1_700_000_500_000 + 600_000) // 1000


def test_introspection_is_answered_without_waiting() -> None:
    # A plain handler on a hot route: the HTTP multiplexer answers it inline when the key
    # is cached, as it answers POST /tokens/validate; revocation waits for its commit.
    routes = {r.path: r for r in oauth2_routes()}
    introspect_route, revoke_route = routes["/oauth2/introspect"], routes["/oauth2/revoke"]
    assert introspect_route.hot and introspect_route.now_handler is not None
    assert introspect_route.now_if is None
    assert revoke_route.hot and revoke_route.now_handler is None
    assert not introspect_route.audited and revoke_route.audited
    assert introspect_route.permission == "token.validate"
    assert revoke_route.permission == "session.revoke"
