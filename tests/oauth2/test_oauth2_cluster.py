"""The OAuth 2.0 routes in a cluster: any node answers for a token any node owns.

Introspection and revocation go through the same session operations as
``POST /tokens/validate`` and the session revoke, so a token whose shard another node
owns is forwarded to that owner; the gateway never needs to know where a session lives.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster.cluster_support import ClusterNodeProcess, TestCluster, running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    with running_cluster(tmp_path_factory.mktemp("oauth2-cluster"), 2) as c:
        yield c


def _introspect(node: ClusterNodeProcess, key: str, token: str) -> dict[str, Any]:
    r = httpx.post(
        node.base_url + "/oauth2/introspect",
        data={"token": token, "token_type_hint": "access_token"},
        auth=tuple(key.split(":")),  # type: ignore[arg-type]
        timeout=10,
    )
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_introspect_and_revoke_on_every_node(cluster: TestCluster) -> None:
    key = cluster.admin_key()
    first, second = cluster.nodes
    owners: set[str] = set()
    made: list[dict[str, Any]] = []
    # Sessions of several users, until both nodes own at least one of them.
    for n in range(32):
        with first.client(key) as c:
            r = c.post("/sessions", json={"user_id": f"oauth-cluster-{n}", "ttl_seconds": 600})
        assert r.status_code == 201, r.text
        made.append(r.json()["data"])
        owners.add(cluster.owner_of(made[-1]["session_id"]))
        if len(owners) == 2:
            break
    assert owners == {first.node_id, second.node_id}
    for data in made:
        for node in cluster.nodes:
            doc = _introspect(node, key, data["token"])
            assert doc["active"] is True
            assert doc["sid"] == data["session_id"]
    # Revoke each session at the node that does not own it.
    for data in made:
        owner = cluster.owner_of(data["session_id"])
        other = second if owner == first.node_id else first
        r = httpx.post(
            other.base_url + "/oauth2/revoke",
            data={"token": data["token"]},
            auth=tuple(key.split(":")),  # type: ignore[arg-type]
            timeout=10,
        )
        assert r.status_code == 200, r.text
        for node in cluster.nodes:
            assert _introspect(node, key, data["token"]) == {"active": False}
            with node.client(key) as c:
                v = c.post("/tokens/validate", json={"token": data["token"]})
            assert v.status_code == 401 and v.json()["code"] == "TM-TOKN-4012", v.text
