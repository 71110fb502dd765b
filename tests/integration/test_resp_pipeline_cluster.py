"""Pipelined RESP mutations through a cluster node: submitted together, forwarded to
their owners, and still answered in command order with each session's mutations applied
in order (tokmesh/resp/commands.py ``Dispatcher.run_awaited``).

Three real ``tokmesh-server`` processes on one etcd (as tests/cluster/test_cluster_nodes.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.cluster.cluster_support import TestCluster, running_cluster
from tokmesh.domain.ids import new_session_id_in_shard


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), 3) as c:
        yield c


def pipeline(client: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    pipe: Any = client.pipeline(transaction=False)  # redis-py's pipeline is untyped
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute(raise_on_error=False))


def test_pipelined_mutations_across_owners_keep_order(cluster: TestCluster) -> None:
    key_id, secret = cluster.admin_key().split(":", 1)
    node = cluster.nodes[0]
    client = redis.Redis("127.0.0.1", node.redis_port, username=key_id, password=secret)
    # Ids in 60 shards: about two thirds are owned by the other nodes (forwarded).
    sids = [new_session_id_in_shard(shard * 4) for shard in range(60)]
    owners = {cluster.owner_of(sid) for sid in sids}
    assert len(owners) == 3, owners
    commands: list[tuple[Any, ...]] = [
        ("TM.CREATE", sid, json.dumps({"user_id": f"pipe-{n}"})) for n, sid in enumerate(sids)
    ]
    # Then, per session: renew, read, revoke, renew again (refused), read again.
    for sid in sids[:10]:
        commands += [("EXPIRE", sid, 500), ("TTL", sid), ("DEL", sid), ("EXPIRE", sid, 500)]
        commands.append(("EXISTS", sid))
    replies = pipeline(client, commands)
    assert [json.loads(r)["session_id"] for r in replies[:60]] == sids
    for n in range(10):
        renewed, ttl, deleted, again, exists = replies[60 + 5 * n : 65 + 5 * n]
        assert (renewed, deleted, again, exists) == (1, 1, 0, 0), (n, replies[60 + 5 * n :])
        assert ttl in (499, 500)
    # The same user's creates and its revocation, in one pipeline, through the cluster.
    user = "pipe-user"
    mine = [new_session_id_in_shard(shard) for shard in (7, 90, 200)]
    replies = pipeline(
        client,
        [("TM.CREATE", sid, json.dumps({"user_id": user})) for sid in mine]
        + [("TM.REVOKE_USER", user), ("EXISTS", *mine)],
    )
    assert [json.loads(r)["session_id"] for r in replies[:3]] == mine
    assert replies[3:] == [3, 0]
    assert client.exists(*sids[10:]) == 50
