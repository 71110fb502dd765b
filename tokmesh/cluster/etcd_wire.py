"""Sans-IO encoding of etcd v3 requests and answers for its HTTP/JSON gateway.

The gateway (etcd 3.4) speaks the gRPC messages as JSON with three quirks this module
hides from the rest of TokMesh:

* keys, values and ``range_end`` travel as standard base64 with padding;
* every int64 comes back as a JSON *string* (``"revision": "12"``);
* zero and false fields are omitted (a missing key has no ``kvs``, a failed txn has no
  ``succeeded``, a PUT event has no ``type``), so every field is read with a default.

Builders return plain dicts ready for JSON; parsers take decoded JSON and return frozen
records. Nothing here touches a socket, so all of it is tested without etcd. Errors are
classified into the small :class:`EtcdError` hierarchy the client and its callers use to
decide what is safe to retry.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs
import orjson

# One txn holds at most this many operations with etcd's default ``--max-txn-ops``; more
# is refused by the server with InvalidArgument, so callers split before sending.
MAX_TXN_OPS: Final = 128

# gRPC status codes the gateway reports in ``code`` (unary) or ``grpc_code`` (streams).
GRPC_UNKNOWN: Final = 2
GRPC_INVALID_ARGUMENT: Final = 3
GRPC_DEADLINE_EXCEEDED: Final = 4
GRPC_NOT_FOUND: Final = 5
GRPC_FAILED_PRECONDITION: Final = 9
GRPC_OUT_OF_RANGE: Final = 11
GRPC_UNAVAILABLE: Final = 14
GRPC_UNAUTHENTICATED: Final = 16

# -- errors ---------------------------------------------------------------------------------


class EtcdError(Exception):
    """Any failure talking to etcd; ``grpc_code`` is set when etcd itself answered."""

    def __init__(self, message: str, grpc_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.grpc_code = grpc_code


class EtcdUnavailable(EtcdError):
    """No endpoint could be reached in time, or the one reached cannot serve right now.

    The request may or may not have been applied when this is raised for a write.
    """


class EtcdNoLeader(EtcdUnavailable):
    """The member reached has no raft leader (lost quorum or an election is running)."""


class EtcdCompacted(EtcdError):
    """The revision asked for was compacted away; ``compact_revision`` is the oldest kept."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message, GRPC_OUT_OF_RANGE)
        self.compact_revision = compact_revision


class EtcdLeaseLost(EtcdError):
    """The lease does not exist (expired, revoked, or never granted)."""


class EtcdAuthError(EtcdError):
    """Authentication failed, or the token is no longer valid."""


class EtcdBadResponse(EtcdError):
    """etcd (or something pretending to be it) answered with something we cannot read."""


class EtcdRequestError(EtcdError):
    """etcd refused the request itself (bad argument, too many txn ops, ...)."""


def classify_error(grpc_code: int | None, message: str) -> EtcdError:
    """Map a gateway error (gRPC code and message) onto the exception hierarchy."""
    low = message.lower()
    if "no leader" in low or "leader changed" in low:
        return EtcdNoLeader(message, grpc_code)
    if "compacted" in low:
        return EtcdCompacted(message)
    if "lease not found" in low or "requested lease not found" in low:
        return EtcdLeaseLost(message, grpc_code)
    if grpc_code == GRPC_UNAUTHENTICATED or "invalid auth token" in low:
        return EtcdAuthError(message, grpc_code)
    if "authentication failed" in low or "user name is empty" in low:
        return EtcdAuthError(message, grpc_code)
    if grpc_code in (GRPC_UNAVAILABLE, GRPC_DEADLINE_EXCEEDED):
        return EtcdUnavailable(message, grpc_code)
    # A write that reached a member without quorum times out inside etcd and comes back as
    # Unknown "context deadline exceeded" / "request timed out": the outcome is unknown.
    if grpc_code == GRPC_UNKNOWN and ("deadline" in low or "timed out" in low):
        return EtcdUnavailable(message, grpc_code)
    return EtcdRequestError(message, grpc_code)


def error_from_http(status: int, body: bytes) -> EtcdError:
    """Classify a non-200 unary answer (``{"error", "message", "code"}``)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message", doc.get("error")), str):
        code = doc.get("code")
        return classify_error(code if isinstance(code, int) else None, str(doc.get("message")))
    text = body[:200].decode("utf-8", "replace")
    if status in (502, 503, 504):
        return EtcdUnavailable(f"HTTP {status}: {text}")
    return EtcdBadResponse(f"HTTP {status} without an etcd error body: {text}")


# -- encoding helpers -----------------------------------------------------------------------


def b64(data: bytes) -> str:
    """Standard base64 with padding, as the gateway expects for keys and values."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, field: str) -> bytes:
    """Decode a base64 field; anything else is a bad response naming the field."""
    if not isinstance(text, str):
        raise EtcdBadResponse(f"field {field!r} is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EtcdBadResponse(f"field {field!r} is not base64") from exc


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``.

    etcd's rule: increment the last byte that is not 0xff and drop what follows; an
    all-0xff (or empty) prefix means "to the end of the keyspace", spelled ``\\0``.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _int(doc: Mapping[str, Any], name: str) -> int:
    """An int64 field sent as a string (or a number), absent meaning zero."""
    raw = doc.get(name, 0)
    if isinstance(raw, bool):
        raise EtcdBadResponse(f"field {name!r} is a boolean, expected an integer")
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise EtcdBadResponse(f"field {name!r} is not an integer: {raw!r}") from exc


def _obj(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    raw = doc.get(name)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise EtcdBadResponse(f"field {name!r} is not an object")
    return raw


def _list(doc: Mapping[str, Any], name: str) -> list[Any]:
    raw = doc.get(name)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise EtcdBadResponse(f"field {name!r} is not a list")
    return raw


def decode_json(body: bytes) -> Mapping[str, Any]:
    """Parse one JSON object or raise :class:`EtcdBadResponse`."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EtcdBadResponse(f"answer is not JSON: {body[:120]!r}") from exc
    if not isinstance(doc, dict):
        raise EtcdBadResponse("answer is not a JSON object")
    return doc


# -- records --------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class ResponseHeader:
    """The header etcd puts on every answer; ``revision`` is the store revision then."""

    revision: int
    raft_term: int = 0
    member_id: int = 0
    cluster_id: int = 0


@attrs.frozen(slots=True)
class KeyValue:
    """One key as stored: value, revisions, version and the lease it is attached to."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@attrs.frozen(slots=True)
class RangeResult:
    """Keys found by a range; ``count`` is the total matched, ``more`` if a limit cut it."""

    header: ResponseHeader
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool


@attrs.frozen(slots=True)
class PutResult:
    """A put's new revision (in the header) and, if asked, the previous value."""

    header: ResponseHeader
    prev_kv: KeyValue | None


@attrs.frozen(slots=True)
class DeleteResult:
    """How many keys a delete removed and, if asked, their previous values."""

    header: ResponseHeader
    deleted: int
    prev_kvs: tuple[KeyValue, ...]


@attrs.frozen(slots=True)
class TxnResult:
    """Which branch ran and the answer of each of its operations, in order."""

    header: ResponseHeader
    succeeded: bool
    responses: tuple[RangeResult | PutResult | DeleteResult | TxnResult, ...]


@attrs.frozen(slots=True)
class LeaseGrant:
    """A granted lease: its ID and the TTL etcd actually gave (it has a minimum)."""

    lease_id: int
    ttl: int


@attrs.frozen(slots=True)
class Event:
    """One change seen by a watch; ``kv.mod_revision`` is the revision it happened at."""

    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    prev_kv: KeyValue | None


@attrs.frozen(slots=True)
class WatchMessage:
    """One message of a watch stream (creation, events, progress or cancellation)."""

    header: ResponseHeader
    watch_id: int
    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str
    events: tuple[Event, ...]


# -- parsers --------------------------------------------------------------------------------


def parse_header(doc: Mapping[str, Any]) -> ResponseHeader:
    """Read the ``header`` of an answer."""
    h = _obj(doc, "header")
    return ResponseHeader(
        revision=_int(h, "revision"),
        raft_term=_int(h, "raft_term"),
        member_id=_int(h, "member_id"),
        cluster_id=_int(h, "cluster_id"),
    )


def parse_kv(doc: Mapping[str, Any]) -> KeyValue:
    """Read one ``mvccpb.KeyValue``."""
    if not isinstance(doc, dict):
        raise EtcdBadResponse("key-value entry is not an object")
    return KeyValue(
        key=unb64(doc.get("key", ""), "key"),
        value=unb64(doc.get("value", ""), "value"),
        create_revision=_int(doc, "create_revision"),
        mod_revision=_int(doc, "mod_revision"),
        version=_int(doc, "version"),
        lease=_int(doc, "lease"),
    )


def parse_range(doc: Mapping[str, Any]) -> RangeResult:
    """Read a range answer; a missing key simply has no ``kvs`` and no ``count``."""
    kvs = tuple(parse_kv(kv) for kv in _list(doc, "kvs"))
    return RangeResult(parse_header(doc), kvs, _int(doc, "count"), bool(doc.get("more")))


def parse_put(doc: Mapping[str, Any]) -> PutResult:
    """Read a put answer."""
    prev = doc.get("prev_kv")
    return PutResult(parse_header(doc), parse_kv(prev) if prev else None)


def parse_delete(doc: Mapping[str, Any]) -> DeleteResult:
    """Read a delete-range answer."""
    prev = tuple(parse_kv(kv) for kv in _list(doc, "prev_kvs"))
    return DeleteResult(parse_header(doc), _int(doc, "deleted"), prev)


def parse_txn(doc: Mapping[str, Any]) -> TxnResult:
    """Read a txn answer; a failed compare has no ``succeeded`` field at all."""
    out: list[RangeResult | PutResult | DeleteResult | TxnResult] = []
    for item in _list(doc, "responses"):
        if not isinstance(item, dict):
            raise EtcdBadResponse("txn response item is not an object")
        if "response_range" in item:
            out.append(parse_range(_obj(item, "response_range")))
        elif "response_put" in item:
            out.append(parse_put(_obj(item, "response_put")))
        elif "response_delete_range" in item:
            out.append(parse_delete(_obj(item, "response_delete_range")))
        elif "response_txn" in item:
            out.append(parse_txn(_obj(item, "response_txn")))
        else:
            raise EtcdBadResponse(f"unknown txn response item {sorted(item)}")
    return TxnResult(parse_header(doc), bool(doc.get("succeeded")), tuple(out))


def parse_lease_grant(doc: Mapping[str, Any]) -> LeaseGrant:
    """Read a lease grant; an error inside a 200 answer is reported as such."""
    if doc.get("error"):
        raise classify_error(None, str(doc["error"]))
    lease_id, ttl = _int(doc, "ID"), _int(doc, "TTL")
    if lease_id == 0 or ttl <= 0:
        raise EtcdBadResponse("lease grant without an ID or TTL")
    return LeaseGrant(lease_id, ttl)


def parse_keepalive(doc: Mapping[str, Any]) -> int:
    """The TTL left after one keepalive; raises :class:`EtcdLeaseLost` for a dead lease.

    The gateway answers 200 for an unknown or expired lease, only without ``TTL``.
    """
    if "error" in doc:
        raise stream_error(doc["error"])
    result = _obj(doc, "result")
    ttl = _int(result, "TTL")
    if ttl <= 0:
        raise EtcdLeaseLost(f"lease {_int(result, 'ID')} is gone (keepalive without TTL)")
    return ttl


def parse_lease_ttl(doc: Mapping[str, Any]) -> int:
    """Seconds left on a lease from ``timetolive``; -1 when it no longer exists."""
    return _int(doc, "TTL")


def parse_event(doc: Mapping[str, Any]) -> Event:
    """Read one watch event; a PUT has no ``type`` field (it is the zero value)."""
    kind = doc.get("type", "PUT")
    if kind not in ("PUT", "DELETE"):
        raise EtcdBadResponse(f"unknown watch event type {kind!r}")
    prev = doc.get("prev_kv")
    return Event(kind, parse_kv(_obj(doc, "kv")), parse_kv(prev) if prev else None)


def stream_error(err: object) -> EtcdError:
    """Classify the ``{"error": {...}}`` object that ends a gateway stream."""
    if not isinstance(err, dict):
        return classify_error(None, str(err))
    code = err.get("grpc_code")
    return classify_error(code if isinstance(code, int) else None, str(err.get("message", "")))


def parse_watch_line(line: bytes) -> WatchMessage:
    """Read one line of a watch stream; a stream-level error is raised, not returned."""
    doc = decode_json(line)
    if "error" in doc:
        raise stream_error(doc["error"])
    result = _obj(doc, "result")
    return WatchMessage(
        header=parse_header(result),
        watch_id=_int(result, "watch_id"),
        created=bool(result.get("created")),
        canceled=bool(result.get("canceled")),
        compact_revision=_int(result, "compact_revision"),
        cancel_reason=str(result.get("cancel_reason", "")),
        events=tuple(parse_event(e) for e in _list(result, "events")),
    )


# -- request builders -----------------------------------------------------------------------

CompareTarget = Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
CompareResult = Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]

_COMPARE_FIELD: Final[dict[str, str]] = {
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VALUE": "value",
    "LEASE": "lease",
}


def compare(
    key: bytes, target: CompareTarget, result: CompareResult, operand: int | bytes
) -> dict[str, Any]:
    """One txn comparison, e.g. ``compare(k, "CREATE", "EQUAL", 0)`` = "k does not exist"."""
    if (target == "VALUE") != isinstance(operand, bytes):
        raise TypeError("VALUE compares bytes, every other target compares an integer")
    value = b64(operand) if isinstance(operand, bytes) else str(operand)
    return {"target": target, "key": b64(key), "result": result, _COMPARE_FIELD[target]: value}


def range_request(
    key: bytes,
    range_end: bytes | None = None,
    *,
    limit: int = 0,
    revision: int = 0,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
) -> dict[str, Any]:
    """Body of ``/v3/kv/range``; ``range_end=None`` reads the single key."""
    body: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    if limit:
        body["limit"] = str(limit)
    if revision:
        body["revision"] = str(revision)
    if serializable:
        body["serializable"] = True
    if keys_only:
        body["keys_only"] = True
    if count_only:
        body["count_only"] = True
    return body


def put_request(
    key: bytes, value: bytes, *, lease: int = 0, prev_kv: bool = False
) -> dict[str, Any]:
    """Body of ``/v3/kv/put``; ``lease`` attaches the key to a lease (0 = none)."""
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    if prev_kv:
        body["prev_kv"] = True
    return body


def delete_request(
    key: bytes, range_end: bytes | None = None, *, prev_kv: bool = False
) -> dict[str, Any]:
    """Body of ``/v3/kv/deleterange``."""
    body: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    if prev_kv:
        body["prev_kv"] = True
    return body


def op_range(key: bytes, range_end: bytes | None = None) -> dict[str, Any]:
    """A range inside a txn branch."""
    return {"request_range": range_request(key, range_end)}


def op_put(key: bytes, value: bytes, *, lease: int = 0) -> dict[str, Any]:
    """A put inside a txn branch."""
    return {"request_put": put_request(key, value, lease=lease)}


def op_delete(key: bytes, range_end: bytes | None = None) -> dict[str, Any]:
    """A delete inside a txn branch."""
    return {"request_delete_range": delete_request(key, range_end)}


def txn_request(
    compares: Sequence[Mapping[str, Any]],
    success: Sequence[Mapping[str, Any]],
    failure: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Body of ``/v3/kv/txn``; refuses more operations than etcd's default limit.

    Checked here rather than left to etcd so a caller learns it before anything is sent.
    """
    if max(len(compares), len(success), len(failure)) > MAX_TXN_OPS:
        raise EtcdRequestError(
            f"a txn holds at most {MAX_TXN_OPS} operations per list", GRPC_INVALID_ARGUMENT
        )
    return {"compare": list(compares), "success": list(success), "failure": list(failure)}


def watch_create_request(
    key: bytes,
    range_end: bytes | None = None,
    *,
    start_revision: int = 0,
    prev_kv: bool = False,
    progress_notify: bool = True,
) -> dict[str, Any]:
    """Body of ``/v3/watch`` creating one watcher (``start_revision`` 0 = from now)."""
    req: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        req["range_end"] = b64(range_end)
    if start_revision:
        req["start_revision"] = str(start_revision)
    if prev_kv:
        req["prev_kv"] = True
    if progress_notify:
        req["progress_notify"] = True
    return {"create_request": req}
