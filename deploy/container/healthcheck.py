#!/usr/bin/python3 -I
"""Container HEALTHCHECK for tokmesh-server: GET /health on the plain-HTTP listener.

Standard library only (the image has no curl or wget). The address comes from
``TOKMESH_SERVER_HTTP_ADDRESS`` when set (a wildcard host is probed on loopback), else
the image default ``127.0.0.1:5080``; a full URL given as the first argument wins.
Exit 0 when the server answers 200, 1 otherwise (the HEALTHCHECK contract).
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_ADDRESS = "127.0.0.1:5080"
TIMEOUT_SECONDS = 4.0


def health_url(address: str) -> str:
    """The ``/health`` URL for a ``host:port`` listen address (wildcards -> loopback)."""
    host, _, port = address.strip().rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"http://{host}:{port}/health"


def main(argv: list[str]) -> int:
    """Probe once; print one line for ``podman healthcheck``/``docker inspect``."""
    url = (
        argv[1]
        if len(argv) > 1
        else health_url(os.environ.get("TOKMESH_SERVER_HTTP_ADDRESS") or DEFAULT_ADDRESS)
    )
    # No proxy: an HTTP(S)_PROXY set for the server's egress must not catch a loopback probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as resp:
            status = resp.status
    except Exception as exc:  # any failure (refused, timeout, HTTP error) is "unhealthy"
        print(f"unhealthy: {url}: {exc}")
        return 1
    print(f"{'healthy' if status == 200 else 'unhealthy'}: {url}: HTTP {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
