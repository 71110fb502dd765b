"""The shard of a key: murmur3 x86 32-bit of its UTF-8 bytes, seed 0, mod 256.

A pure function shared by the store (which actor serialises a user's writes) and the
cluster (which node owns a session); it lives in the domain layer so both can use it
without the store depending on the cluster package. Never Python's ``hash()``: that one is
randomised per process, and where data lives must be the same in every process.
"""

from __future__ import annotations

from collections.abc import Sequence

import mmh3

#: Number of shards, fixed for the life of a cluster: changing it would move every session.
SHARDS = 256


def shard_of(key: str) -> int:
    """The shard (0-255) of a session id (or of any key hashed the same way, such as a
    token hash or a user id): unsigned murmur3 x86 32-bit of its UTF-8 bytes, seed 0."""
    return mmh3.hash(key, 0, signed=False) % SHARDS


def first_in_shard(head: str, tails: Sequence[str], shard: int) -> int:
    """The index of the first ``tail`` for which ``head + tail`` is in ``shard``, or -1.

    The same hash as :func:`shard_of`, looped here without a call per candidate: it is
    how an id is searched for in a given shard (hundreds of candidates per id).
    """
    h = mmh3.hash
    for i, tail in enumerate(tails):
        if h(head + tail, 0, signed=False) % SHARDS == shard:
            return i
    return -1
