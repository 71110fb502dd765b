"""Pipelined ``TM.VALIDATE`` of distinct tokens is answered in one loop, with the same
answers, in the same order, as one by one."""

from __future__ import annotations

import json

import pytest
import redis
import trio

from tokmesh.domain.ids import new_session_id
from tokmesh.domain.tokens import generate_token

from .conftest import RealStack, in_thread


async def test_a_run_of_distinct_validations_answers_each_in_order(
    real_stack: RealStack,
) -> None:
    kid, secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(kid, secret)
    sids = [new_session_id() for _ in range(40)]
    tokens: list[str] = []

    def setup() -> None:
        for i, sid in enumerate(sids):
            made = client.execute_command("TM.CREATE", sid, json.dumps({"user_id": f"u{i}"}))
            tokens.append(json.loads(made)["token"])
        client.delete(sids[3])  # revoked

    await in_thread(setup)
    asked = [
        tokens[0],
        generate_token(),  # unknown
        tokens[3],  # revoked
        "tmtk_short",  # malformed
        *tokens[4:],
    ]

    def run() -> list[object]:
        pipe = client.pipeline(transaction=False)
        for token in asked:
            pipe.execute_command("TM.VALIDATE", token)
        return list(pipe.execute(raise_on_error=False))

    replies = await in_thread(run)
    assert replies[0] == b"OK"
    for bad in replies[1:4]:
        assert isinstance(bad, redis.ResponseError) and "TM-TOKN-4010" in str(bad)
    assert replies[4:] == [b"OK"] * (len(asked) - 4)


async def test_a_run_is_refused_for_a_role_without_validate(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("metrics")
    client = real_stack.client_for(kid, secret)

    def run() -> list[object]:
        pipe = client.pipeline(transaction=False)
        for _ in range(5):
            pipe.execute_command("TM.VALIDATE", generate_token())
        return list(pipe.execute(raise_on_error=False))

    replies = await in_thread(run)
    assert len(replies) == 5
    assert all(isinstance(r, redis.ResponseError) for r in replies)
    with pytest.raises(redis.ResponseError):
        await in_thread(client.execute_command, "TM.VALIDATE", generate_token())
    await trio.sleep(0)
