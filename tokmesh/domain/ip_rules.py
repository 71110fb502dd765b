"""Client IP resolution behind trusted proxies (02 §5, R3) and IP allow-lists (02 §13).

Pure functions over ``ipaddress`` objects; no I/O. Header mappings are expected with
lower-case names (as ASGI and httptools deliver them, or any case-insensitive mapping).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from tokmesh.domain.errors import ErrorCode, TokMeshError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[IPNetwork, ...]


@functools.lru_cache(maxsize=8192)
def parse_ip(value: str) -> IPAddress | None:
    """Parse one address; IPv4-mapped IPv6 becomes IPv4 (02 §13); ``None`` if invalid.

    A zone suffix (``fe80::1%eth0``) is dropped: allow-lists are written without zones.
    """
    text = value.strip()
    if "%" in text:
        text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_network(entry: str) -> IPNetwork | None:
    """Parse an IP or CIDR (bare IP = /32 or /128); ``None`` if invalid.

    Host bits are masked (``10.1.2.3/8`` means ``10.0.0.0/8``), as Go's ``ParseCIDR`` did.
    """
    if not isinstance(entry, str):
        return None
    text = entry.strip()
    if not text or text != entry:
        return None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if isinstance(net, ipaddress.IPv6Network):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            # ::ffff:a.b.c.d/1xx compares as IPv4 (02 §13).
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def parse_networks(entries: Iterable[str], error: ErrorCode, field: str) -> Networks:
    """Parse a whole list, rejecting (never skipping) a bad entry with ``error``.

    ``field`` names the list in the error (e.g. ``allowedlist`` or
    ``security.auth.allow_list``); the failing index goes into ``details``.
    """
    out: list[IPNetwork] = []
    for i, entry in enumerate(entries):
        net = parse_network(entry)
        if net is None:
            raise TokMeshError(
                error,
                f"invalid IP or CIDR in {field}[{i}]",
                details={"field": f"{field}[{i}]"},
            )
        out.append(net)
    return tuple(out)


def networks_or_deny(entries: Sequence[str]) -> Networks | None:
    """Parse stored (already validated) entries; ``None`` if any is corrupt (fail closed)."""
    out: list[IPNetwork] = []
    for entry in entries:
        net = parse_network(entry)
        if net is None:
            return None
        out.append(net)
    return tuple(out)


def ip_in(addr: IPAddress, networks: Networks) -> bool:
    """True when ``addr`` is inside any of ``networks`` (mixed families never match)."""
    return any(addr in net for net in networks)


def ip_allowed(client_ip: str, global_list: Networks, key_list: Networks | None) -> bool:
    """Allow-list decision of 02 §13: both empty = open, else intersection of non-empty lists.

    ``key_list=None`` means the key's stored list could not be parsed: deny.
    """
    if key_list is None:
        return False
    if not global_list and not key_list:
        return True
    addr = parse_ip(client_ip)
    if addr is None:
        return False
    if global_list and not ip_in(addr, global_list):
        return False
    return not (key_list and not ip_in(addr, key_list))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _strip_port(node: str) -> str:
    """``[v6]:port`` -> ``v6``; ``v4:port`` -> ``v4``; bare v6 stays."""
    node = node.strip().strip('"').strip()
    if node.startswith("["):
        end = node.find("]")
        return node[1:end] if end > 0 else node
    if node.count(":") == 1:
        return node.split(":", 1)[0]
    return node


def _walk(entries: list[str], trusted: Networks) -> IPAddress | None:
    """Right-to-left walk: first address that is not a trusted proxy wins (R3).

    An unparsable entry (or ``unknown``/obfuscated ``_x`` in ``Forwarded``) ends the walk
    without a result: everything left of it is unverifiable, so this source is not used.
    All entries trusted -> the leftmost one.
    """
    leftmost: IPAddress | None = None
    for raw in reversed(entries):
        if not raw:
            continue
        addr = parse_ip(_strip_port(raw))
        if addr is None:
            return None
        if not ip_in(addr, trusted):
            return addr
        leftmost = addr
    return leftmost


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` values of an RFC 7239 ``Forwarded`` header, in order."""
    out: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, sep, val = pair.partition("=")
            if sep and name.strip().lower() == "for":
                out.append(val.strip())
    return out


@functools.lru_cache(maxsize=8192)
def _canonical(peer_ip: str) -> str:
    """Canonical text of an address (IPv4-mapped IPv6 as IPv4), or the input if invalid."""
    addr = parse_ip(peer_ip)
    return peer_ip if addr is None else str(addr)


def resolve_client_ip(peer_ip: str, headers: Mapping[str, str], trusted: Networks) -> str:
    """``client_ip`` per 02 §5 / R3.

    Proxy headers count only when the direct peer is inside ``trusted``; then the first
    success of ``Forwarded: for=``, ``X-Forwarded-For`` (right to left, skipping trusted
    proxies), ``X-Real-IP``; otherwise the peer. Returned addresses are canonical text.
    """
    if not trusted:
        # The common case (no proxies configured): the peer, canonical, from a cache.
        return _canonical(peer_ip)
    peer = parse_ip(peer_ip)
    if peer is None:
        return peer_ip
    if not ip_in(peer, trusted):
        return str(peer)
    fwd = _header(headers, "forwarded")
    if fwd is not None:
        addr = _walk(_forwarded_for(fwd), trusted)
        if addr is not None:
            return str(addr)
    xff = _header(headers, "x-forwarded-for")
    if xff is not None:
        addr = _walk([p.strip() for p in xff.split(",")], trusted)
        if addr is not None:
            return str(addr)
    real = _header(headers, "x-real-ip")
    if real is not None:
        addr = parse_ip(_strip_port(real))
        if addr is not None:
            return str(addr)
    return str(peer)
