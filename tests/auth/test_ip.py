"""Client IP behind trusted proxies (02 §5, R3) and allow-lists (02 §13)."""

from __future__ import annotations

import pytest

from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ip_rules import (
    Networks,
    ip_allowed,
    parse_ip,
    parse_network,
    parse_networks,
    resolve_client_ip,
)


def nets(*entries: str) -> Networks:
    return parse_networks(entries, E.CFG_TYPE, "test")


def test_untrusted_peer_ignores_proxy_headers() -> None:
    # 02 §21 #18: trusted_proxies=[] -> XFF is ignored.
    headers = {
        "x-forwarded-for": "192.168.1.5",
        "x-real-ip": "192.168.1.6",
        "forwarded": "for=1.1.1.1",
    }
    assert resolve_client_ip("10.0.0.1", headers, ()) == "10.0.0.1"
    assert resolve_client_ip("10.0.0.2", headers, nets("10.0.0.1/32")) == "10.0.0.2"


def test_xff_walked_right_to_left() -> None:
    # 02 §21 #19.
    trusted = nets("10.0.0.1/32")
    headers = {"x-forwarded-for": "6.6.6.6, 192.168.1.5"}
    assert resolve_client_ip("10.0.0.1", headers, trusted) == "192.168.1.5"


def test_xff_skips_every_trusted_hop() -> None:
    trusted = nets("10.0.0.0/24")
    headers = {"x-forwarded-for": "6.6.6.6, 198.51.100.9, 10.0.0.3, 10.0.0.2"}
    assert resolve_client_ip("10.0.0.1", headers, trusted) == "198.51.100.9"


def test_xff_all_trusted_takes_leftmost() -> None:
    trusted = nets("10.0.0.0/24")
    headers = {"x-forwarded-for": "10.0.0.9, 10.0.0.3"}
    assert resolve_client_ip("10.0.0.1", headers, trusted) == "10.0.0.9"


def test_garbage_nearest_entry_falls_back() -> None:
    trusted = nets("10.0.0.1/32")
    headers = {"x-forwarded-for": "6.6.6.6, not-an-ip", "x-real-ip": "192.0.2.4"}
    assert resolve_client_ip("10.0.0.1", headers, trusted) == "192.0.2.4"
    assert resolve_client_ip("10.0.0.1", {"x-forwarded-for": "junk"}, trusted) == "10.0.0.1"


def test_forwarded_wins_and_strips_ports_and_brackets() -> None:
    trusted = nets("10.0.0.1/32")
    headers = {
        "forwarded": 'for=6.6.6.6;proto=https, for="[2001:db8::7]:4711"',
        "x-forwarded-for": "192.168.1.5",
    }
    assert resolve_client_ip("10.0.0.1", headers, trusted) == "2001:db8::7"
    headers = {"forwarded": "for=192.0.2.60:8080;by=10.0.0.1"}
    assert resolve_client_ip("10.0.0.1", headers, trusted) == "192.0.2.60"


def test_forwarded_unknown_or_obfuscated_is_not_used() -> None:
    trusted = nets("10.0.0.1/32")
    for value in ("for=unknown", "for=_hidden", 'for="_x"'):
        headers = {"forwarded": value, "x-forwarded-for": "192.168.1.5"}
        assert resolve_client_ip("10.0.0.1", headers, trusted) == "192.168.1.5"


def test_x_real_ip_then_peer() -> None:
    trusted = nets("10.0.0.1/32")
    assert resolve_client_ip("10.0.0.1", {"x-real-ip": "192.0.2.1"}, trusted) == "192.0.2.1"
    assert resolve_client_ip("10.0.0.1", {}, trusted) == "10.0.0.1"


def test_ipv4_mapped_peer_compares_as_ipv4() -> None:
    trusted = nets("10.0.0.1/32")
    headers = {"x-forwarded-for": "192.168.1.5"}
    assert resolve_client_ip("::ffff:10.0.0.1", headers, trusted) == "192.168.1.5"
    assert resolve_client_ip("::ffff:10.0.0.9", headers, trusted) == "10.0.0.9"


def test_allowlist_key_only_v4_and_v6() -> None:
    # 02 §21 #16.
    key = nets("192.168.1.0/24")
    assert not ip_allowed("10.0.0.1", (), key)
    assert ip_allowed("192.168.1.5", (), key)
    key6 = nets("2001:db8::/64")
    assert ip_allowed("2001:db8::5", (), key6)
    assert not ip_allowed("2001:db9::5", (), key6)
    assert not ip_allowed("192.168.1.5", (), key6)


def test_allowlist_intersection() -> None:
    # 02 §21 #17 (§20 #5: intersection, not union).
    glob, key = nets("10.0.0.0/8"), nets("10.1.0.0/16")
    assert ip_allowed("10.1.2.3", glob, key)
    assert not ip_allowed("10.2.0.1", glob, key)
    assert not ip_allowed("11.1.2.3", glob, key)
    assert ip_allowed("10.2.0.1", glob, ())


def test_allowlist_open_and_fail_closed() -> None:
    assert ip_allowed("anything", (), ())
    assert not ip_allowed("not-an-ip", nets("10.0.0.0/8"), ())
    assert not ip_allowed("10.0.0.1", (), None)  # corrupt stored list -> deny
    assert ip_allowed("::ffff:192.168.1.5", (), nets("192.168.1.0/24"))


def test_bare_ip_is_host_network() -> None:
    net = parse_network("192.168.1.5")
    assert net is not None and net.prefixlen == 32
    net6 = parse_network("2001:db8::1")
    assert net6 is not None and net6.prefixlen == 128


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "300.1.1.1", "", " 10.0.0.1", "abc", "::/129"])
def test_invalid_entries_rejected(entry: str) -> None:
    with pytest.raises(TokMeshError) as exc:
        parse_networks(["10.0.0.0/8", entry], E.ARG_INVALID, "allowedlist")
    assert exc.value.code == "TM-ARG-1001"
    assert exc.value.details == {"field": "allowedlist[1]"}


def test_parse_ip_variants() -> None:
    assert str(parse_ip("::ffff:1.2.3.4")) == "1.2.3.4"
    assert str(parse_ip("fe80::1%eth0")) == "fe80::1"
    assert parse_ip("1.2.3") is None
