"""Cluster-aware identifiers: session ids searched into a shard, tokens that name theirs."""

from __future__ import annotations

import pytest

from tokmesh.domain.ids import (
    SESSION_ID_RE,
    UlidGenerator,
    new_session_id,
    new_session_id_in_shard,
)
from tokmesh.domain.shards import SHARDS, first_in_shard, shard_of
from tokmesh.domain.tokens import generate_token, is_valid_token, token_digest, token_shard


def test_session_ids_in_a_given_shard_are_valid_increasing_and_in_it() -> None:
    previous = ""
    for i in range(2 * SHARDS):
        shard = (i * 37) % SHARDS
        sid = new_session_id_in_shard(shard)
        assert SESSION_ID_RE.fullmatch(sid)
        assert shard_of(sid) == shard
        assert sid > previous  # ids stay strictly increasing, mixed with plain ones
        previous = sid
        plain = new_session_id()
        assert plain > previous
        previous = plain


def test_a_block_without_a_match_is_skipped() -> None:
    # No two-character tail puts this head into a shard that the first 3 tails miss:
    # the search answers -1 and the generator moves on to the next block.
    tails = ["00", "01", "02"]
    head = "tmss-0000000000000000000000"
    shards = {shard_of(head + t) for t in tails}
    missing = next(s for s in range(SHARDS) if s not in shards)
    assert first_in_shard(head, tails, missing) == -1
    assert first_in_shard(head, tails, shard_of(head + "01")) in (0, 1)
    gen = UlidGenerator()
    ids = [gen.new_in_shard("tmss-", 5) for _ in range(50)]
    assert ids == sorted(set(ids)) and {shard_of(i) for i in ids} == {5}


@pytest.mark.parametrize("shard", [0, 1, 127, 128, 255])
def test_issued_tokens_name_their_shard(shard: int) -> None:
    tokens = {generate_token(shard) for _ in range(200)}
    assert len(tokens) == 200  # still random
    for token in tokens:
        assert is_valid_token(token) and token_shard(token) == shard


def test_any_valid_token_has_a_shard_from_its_first_byte() -> None:
    token = generate_token()
    assert 0 <= token_shard(token) < SHARDS
    # Not a hash of the token: the first byte of its 32 bytes, readable without hashing.
    assert token_shard("tmtk_" + "A" * 42 + "A") == 0
    assert token_shard("tmtk_" + "_" * 42 + "A") == 255
    assert len(token_digest(token)) == 32
