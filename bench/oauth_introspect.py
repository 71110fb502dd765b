"""OAuth 2.0 introspection benchmark (issue 14): ``POST /oauth2/introspect`` as a gateway
plugin sends it (form body, HTTP Basic, ``token_type_hint=access_token``) against
``POST /tokens/validate`` (JSON body, Bearer key) on one node, with the same wrk
settings, 1,000 distinct valid tokens each, in alternating rounds.

Goal: introspection ≥ 0.8x the throughput of validate.

    python bench/oauth_introspect.py [--duration 10] [--connections 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import (
    WRK_DONE_LUA,
    discard_node,
    loadavg,
    parse_wrk,
    process_cpu_seconds,
    start_node,
    wrk_command,
)

# One script, two request shapes, chosen by TM_MODE; every request names another token.
LUA = (
    r"""
local tokens = {}
for line in io.lines(os.getenv("TM_TOKENS")) do tokens[#tokens + 1] = line end
local introspect = os.getenv("TM_MODE") == "introspect"
local basic = os.getenv("TM_BASIC")
local bearer = os.getenv("TM_BEARER")
local i = 0
request = function()
  i = i + 1
  local token = tokens[(i % #tokens) + 1]
  if introspect then
    return wrk.format("POST", "/oauth2/introspect", {
      ["Authorization"] = "Basic " .. basic,
      ["Content-Type"] = "application/x-www-form-urlencoded",
    }, "token=" .. token .. "&token_type_hint=access_token")
  end
  return wrk.format("POST", "/tokens/validate", {
    ["Authorization"] = "Bearer " .. bearer,
    ["Content-Type"] = "application/json",
  }, '{"token":"' .. token .. '"}')
end
"""
    + WRK_DONE_LUA
)


def basic_value(key: str) -> str:
    """The Basic credentials of an API key as RFC 6749 §2.3.1 builds them."""
    key_id, secret = key.split(":")
    return base64.b64encode(f"{quote(key_id)}:{quote(secret)}".encode()).decode()


def one_run(
    url: str, pid: int, script: Path, env: dict[str, str], duration: int, connections: int
) -> dict[str, Any]:
    cpu0 = process_cpu_seconds(pid)
    out = subprocess.run(
        wrk_command(url, script, duration, connections),
        capture_output=True,
        text=True,
        env=env,
        timeout=duration + 60,
    ).stdout
    cpu = process_cpu_seconds(pid) - cpu0
    res = parse_wrk(out, duration)
    res.pop("quantiles")
    res["rps"] = round(res["rps"])
    # The server's CPU (user + sys) per request: the cost that does not depend on load.
    res["server_us_per_req"] = round(cpu / max(res["requests"], 1) * 1e6, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    print(
        f"machine: {os.cpu_count()} cores, load {loadavg()}; "
        f"wrk -t2 -c{args.connections} -d{args.duration}s, {args.rounds} rounds"
    )
    # The dashboard is not part of this measurement.
    srv = start_node({"server": {"http": {"ui": {"enabled": False}}}}, name="oauth")
    try:
        issuer = srv.create_key("issuer", rate_limit=1_000_000)
        validator = srv.create_key("validator", rate_limit=1_000_000)
        tokens = []
        with srv.client(issuer) as c:
            for i in range(1000):
                r = c.post("/sessions", json={"user_id": f"gw-user-{i % 200}-{i}"})
                tokens.append(r.json()["data"]["token"])
        work = Path(tempfile.mkdtemp(prefix="tm-wrk-oauth-"))
        (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
        script = work / "oauth.lua"
        script.write_text(LUA)
        basic = basic_value(validator)
        # Warm the key cache for both credential forms (one Argon2 each, then hits).
        warm = httpx.post(
            srv.base_url + "/oauth2/introspect",
            content=f"token={tokens[0]}&token_type_hint=access_token",
            headers={
                "Authorization": "Basic " + basic,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert warm.status_code == 200 and warm.json()["active"] is True, warm.text
        warm = httpx.post(
            srv.base_url + "/tokens/validate",
            json={"token": tokens[0]},
            headers={"Authorization": f"Bearer {validator}"},
        )
        assert warm.status_code == 200, warm.text
        base_env = dict(
            os.environ, TM_TOKENS=str(work / "tokens.txt"), TM_BASIC=basic, TM_BEARER=validator
        )
        assert srv.proc is not None
        ratios = []
        for n in range(args.rounds):
            runs = {}
            for mode in ("validate", "introspect"):
                env = dict(base_env, TM_MODE=mode)
                runs[mode] = one_run(
                    srv.base_url, srv.proc.pid, script, env, args.duration, args.connections
                )
                print(f"round {n + 1} {mode:10s}", json.dumps(runs[mode]))
                if runs[mode]["non2xx"] or runs[mode]["socket_errors"]:
                    print(f"  warning: {mode} had non-2xx answers or socket errors")
            ratio = runs["introspect"]["rps"] / max(runs["validate"]["rps"], 1)
            ratios.append(ratio)
            print(f"round {n + 1} introspect/validate throughput: {ratio:.2f}x")
        median = statistics.median(ratios)
        verdict = "PASS" if median >= 0.8 else "FAIL"
        print(f"median introspect/validate ratio {median:.2f}x (goal >= 0.8x): {verdict}")
        shutil.rmtree(work, ignore_errors=True)
    finally:
        discard_node(srv)


if __name__ == "__main__":
    main()
