"""Failed authentication takes as long whether or not the key id exists (real server).

A wrong secret for an existing key costs one Argon2 verify; an unknown key id must cost
the same, or an attacker learns which key ids exist by timing the 401. Measured with the
default Argon2 parameters, interleaved (so load on a shared machine hits both kinds
alike), each request from its own client address (so the per-IP block never starts).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.server import ServerProcess
from tokmesh.domain.ids import new_key_id

pytestmark = pytest.mark.fault

SAMPLES = 40
WARM_UP = 4


def test_unknown_key_id_fails_as_slowly_as_a_wrong_secret(tmp_path: Path) -> None:
    node = ServerProcess(
        tmp_path / "node",
        {
            "security": {
                # The defaults (the test helper lowers them to save time elsewhere).
                "auth": {"argon2": {"memory": 16384, "iterations": 2, "parallelism": 2}},
                "network": {"trusted_proxies": ["127.0.0.1"]},
            }
        },
    )
    addresses = (f"198.18.{n // 250}.{n % 250 + 1}" for n in range(100_000))
    try:
        node.start()
        key_id, secret = node.create_key("issuer").split(":", 1)
        wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
        with httpx.Client(base_url=node.base_url, timeout=30) as client:

            def timed(kid: str, sec: str) -> float:
                headers = {
                    "Authorization": f"Bearer {kid}:{sec}",
                    "X-Forwarded-For": next(addresses),
                }
                t0 = time.perf_counter()
                r = client.get("/sessions", params={"user_id": "u"}, headers=headers)
                elapsed = time.perf_counter() - t0
                assert r.status_code == 401 and r.json()["code"] == "TM-AUTH-4011", r.text
                return elapsed

            def hit() -> float:
                t0 = time.perf_counter()
                r = client.get("/sessions", params={"user_id": "u"}, headers=ok_headers)
                assert r.status_code == 200, r.text
                return time.perf_counter() - t0

            ok_headers = {"Authorization": f"Bearer {key_id}:{secret}"}
            unknown: Callable[[], float] = lambda: timed(new_key_id(), secret)  # noqa: E731
            existing: Callable[[], float] = lambda: timed(key_id, wrong)  # noqa: E731
            for _ in range(WARM_UP):
                unknown(), existing(), hit()
            u: list[float] = []
            w: list[float] = []
            cached: list[float] = []
            for i in range(SAMPLES):
                # Alternate which kind goes first, so neither always follows the other.
                if i % 2:
                    u.append(unknown())
                    w.append(existing())
                else:
                    w.append(existing())
                    u.append(unknown())
                cached.append(hit())
    finally:
        node.stop()
    mu, mw, mc = statistics.median(u), statistics.median(w), statistics.median(cached)
    print(f"median 401 unknown id {mu * 1e3:.2f} ms, wrong secret {mw * 1e3:.2f} ms")
    print(f"median 200 from the cache {mc * 1e3:.2f} ms")
    # Argon2 is what is measured: a wrong secret costs far more than a cache hit.
    assert mw > 2 * mc, (mw, mc)
    # Before the fix the ratio was about 1/16.
    assert 0.5 <= mu / mw <= 2.0, (mu, mw)
