"""Loop stalls from the store's maps growing (issue 17): the longest single insert.

Inserts N sessions (distinct ids, tokens and random user ids) one at a time, timing each
insert, twice in the same invocation:

- reference: the previous layout, plain dicts for the primary map, the token index and the
  user index (what ``StoreState.put`` wrote to before the maps were segmented);
- ``StoreState.put`` as it is (segmented maps, every index).

A CPython dict rebuilds its whole table when it fills up; with plain dicts that rebuild
happens inside one insert, on the event loop. Prints, for both, the inserts slower than
5 ms, the longest one and the total time.

    python bench/map_growth.py [N]      # default 1,500,000 (past the 1,398,101 rebuild)
"""

from __future__ import annotations

import gc
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tokmesh.actors.state import StoreState
from tokmesh.domain.ids import new_session_id
from tokmesh.domain.session import Session
from tokmesh.domain.tokens import generate_token, token_digest

SLOW_S = 0.005


def sessions(n: int, now: int) -> list[Session]:
    """``n`` live sessions of random users with a day's TTL, created 10,000 a second up to
    ``now`` (so their expiries spread over the expiry wheel as a real fill's do)."""
    rng = random.Random(1)
    out = []
    for i in range(n):
        created = now - (n - i) // 10
        out.append(
            Session(
                id=new_session_id(),
                user_id=f"user-{rng.getrandbits(48):012x}",
                token_hash=token_digest(generate_token()),
                created_at=created,
                expires_at=created + 86_400_000,
                last_active=created,
            )
        )
    return out


def plain_dicts() -> Callable[[Session], None]:
    """The previous layout's inserts: three plain dicts."""
    by_id: dict[str, Session] = {}
    by_token: dict[bytes, str] = {}
    by_user: dict[str, str] = {}

    def put(s: Session) -> None:
        by_id[s.id] = s
        by_token[s.token_hash] = s.id
        by_user[s.user_id] = s.id

    return put


def timed(label: str, put: Callable[[Session], None], records: list[Session]) -> float:
    """Insert every record with ``put``; prints the slow inserts; the longest (s)."""
    slow: list[tuple[int, float]] = []
    worst = 0.0
    started = time.perf_counter()
    clock = time.perf_counter
    for i, s in enumerate(records):
        t = clock()
        put(s)
        dt = clock() - t
        if dt > worst:
            worst = dt
            if dt > SLOW_S:
                slow.append((i, dt))
        elif dt > SLOW_S:
            slow.append((i, dt))
    total = time.perf_counter() - started
    where = ", ".join(f"#{i:,} {dt * 1000:.0f} ms" for i, dt in slow) or "none"
    print(f"{label}: {total:.2f} s in all; inserts over 5 ms: {where}")
    return worst


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_500_000
    now = int(time.time() * 1000)
    print(f"machine: {os.cpu_count()} cores; {n:,} sessions of random users, one insert each")
    records = sessions(n, now)
    gc.collect()
    gc.freeze()
    gc.disable()  # the engine freezes its records; no collection should land in a timing
    ref = timed("plain dicts (previous layout)", plain_dicts(), records)
    gc.collect()
    state = StoreState()
    cur = timed("StoreState.put (segmented maps, every index)", state.put, records)
    print(
        f"longest insert: {cur * 1000:.1f} ms against {ref * 1000:.1f} ms "
        f"(ratio {cur / ref if ref else 0:.2f}; target: none over 5 ms, as a loop stall)"
    )


if __name__ == "__main__":
    main()
