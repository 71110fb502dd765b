"""The etcd gateway encoding, without sockets: base64, int64-as-string, omitted fields."""

from __future__ import annotations

import base64

import pytest

from tokmesh.cluster import etcd_wire as wire


def _b(s: bytes) -> str:
    return base64.b64encode(s).decode()


def test_prefix_range_end() -> None:
    assert wire.prefix_range_end(b"/tokmesh/") == b"/tokmesh0"
    assert wire.prefix_range_end(b"a\xff") == b"b"
    assert wire.prefix_range_end(b"\xff\xff") == b"\0"


def test_range_of_missing_key_has_defaults() -> None:
    res = wire.parse_range({"header": {"revision": "7", "raft_term": "2"}})
    assert res.header.revision == 7
    assert res.kvs == () and res.count == 0 and res.more is False


def test_range_with_kvs_decodes_base64_and_string_ints() -> None:
    doc = {
        "header": {"revision": "12"},
        "kvs": [
            {
                "key": _b(b"/k"),
                "value": _b(b"v\x00"),
                "create_revision": "3",
                "mod_revision": "12",
                "version": "4",
                "lease": "7587",
            }
        ],
        "count": "1",
        "more": True,
    }
    res = wire.parse_range(doc)
    assert res.kvs[0] == wire.KeyValue(b"/k", b"v\x00", 3, 12, 4, 7587)
    assert res.count == 1 and res.more is True


def test_failed_txn_has_no_succeeded_field() -> None:
    doc = {
        "header": {"revision": "5"},
        "responses": [{"response_range": {"header": {"revision": "5"}, "kvs": [
            {"key": _b(b"x"), "value": _b(b"old"), "mod_revision": "4"}
        ], "count": "1"}}],
    }  # fmt: skip
    res = wire.parse_txn(doc)
    assert res.succeeded is False
    inner = res.responses[0]
    assert isinstance(inner, wire.RangeResult) and inner.kvs[0].value == b"old"


def test_bad_answers_are_bad_response() -> None:
    with pytest.raises(wire.EtcdBadResponse, match="revision"):
        wire.parse_range({"header": {"revision": "x"}})
    with pytest.raises(wire.EtcdBadResponse, match="base64"):
        wire.parse_kv({"key": "!!!"})
    with pytest.raises(wire.EtcdBadResponse):
        wire.decode_json(b"<html>")
    with pytest.raises(wire.EtcdBadResponse, match="txn response"):
        wire.parse_txn({"responses": [{"response_frob": {}}]})


def test_keepalive_without_ttl_is_lease_lost() -> None:
    assert wire.parse_keepalive({"result": {"ID": "5", "TTL": "9"}}) == 9
    with pytest.raises(wire.EtcdLeaseLost):
        wire.parse_keepalive({"result": {"header": {}, "ID": "5"}})


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, b'{"error":"x","message":"mvcc: required revision has been compacted","code":11}',
         wire.EtcdCompacted),
        (404, b'{"message":"etcdserver: requested lease not found","code":5}', wire.EtcdLeaseLost),
        (503, b'{"message":"etcdserver: no leader","code":14}', wire.EtcdNoLeader),
        (401, b'{"message":"etcdserver: invalid auth token","code":16}', wire.EtcdAuthError),
        (500, b'{"message":"context deadline exceeded","code":2}', wire.EtcdUnavailable),
        (400, b'{"message":"etcdserver: too many operations in txn request","code":3}',
         wire.EtcdRequestError),
        (502, b"Bad Gateway", wire.EtcdUnavailable),
        (418, b"teapot", wire.EtcdBadResponse),
    ],
)  # fmt: skip
def test_error_classification(status: int, body: bytes, kind: type[wire.EtcdError]) -> None:
    err = wire.error_from_http(status, body)
    assert type(err) is kind


def test_stream_error_line_raises() -> None:
    line = b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}'
    with pytest.raises(wire.EtcdNoLeader):
        wire.parse_watch_line(line)


def test_watch_lines() -> None:
    created = wire.parse_watch_line(b'{"result":{"header":{"revision":"9"},"created":true}}')
    assert created.created and not created.canceled and created.header.revision == 9
    line = (
        b'{"result":{"header":{"revision":"11"},"events":[{"kv":{"key":"'
        + _b(b"k").encode()
        + b'","mod_revision":"10"}},{"type":"DELETE","kv":{"key":"'
        + _b(b"k").encode()
        + b'","mod_revision":"11"}}]}}'
    )
    msg = wire.parse_watch_line(line)
    assert [e.type for e in msg.events] == ["PUT", "DELETE"]
    assert msg.events[1].kv.mod_revision == 11
    compacted = wire.parse_watch_line(
        b'{"result":{"header":{"revision":"20"},"canceled":true,"compact_revision":"15"}}'
    )
    assert compacted.canceled and compacted.compact_revision == 15


def test_txn_builder_limits_and_compare() -> None:
    assert wire.compare(b"k", "CREATE", "EQUAL", 0) == {
        "target": "CREATE", "key": _b(b"k"), "result": "EQUAL", "create_revision": "0"
    }  # fmt: skip
    assert wire.compare(b"k", "VALUE", "EQUAL", b"v")["value"] == _b(b"v")
    with pytest.raises(TypeError):
        wire.compare(b"k", "MOD", "EQUAL", b"5")
    ops = [wire.op_put(b"k%d" % i, b"") for i in range(wire.MAX_TXN_OPS)]
    assert len(wire.txn_request([], ops)["success"]) == wire.MAX_TXN_OPS
    with pytest.raises(wire.EtcdRequestError):
        wire.txn_request([], [*ops, wire.op_put(b"one-more", b"")])
