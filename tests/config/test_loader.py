"""Loading (spec 05 §2): precedence, discovery, YAML errors, env typing, paths, config.d."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokmesh.config.loader import (
    NO_FILE_WARNING,
    default_search_paths,
    load_config,
    load_yaml_text,
    parse_flag_value,
)
from tokmesh.config.types import ConfigValueError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- precedence


def test_precedence_example_of_2_1(tmp_path: Path) -> None:
    """05 §17 check 2: env beats file, flag beats env, enabled still from the file."""
    cfg_file = _write(
        tmp_path / "config.yaml",
        "server:\n  http:\n    enabled: false\n    address: 127.0.0.1:5080\n",
    )
    env = {"TOKMESH_SERVER_HTTP_ADDRESS": "127.0.0.1:9999"}
    result = load_config(str(cfg_file), env, {}, tmp_path)
    assert result.errors == []
    assert result.config.server.http.address == "127.0.0.1:9999"
    assert result.config.server.http.enabled is False

    result = load_config(str(cfg_file), env, {"--server.http.address": "127.0.0.1:8888"}, tmp_path)
    assert result.config.server.http.address == "127.0.0.1:8888"
    assert result.config.server.http.enabled is False
    assert result.source.env_overrides == ("TOKMESH_SERVER_HTTP_ADDRESS",)
    assert result.source.cli_overrides == ("--server.http.address",)
    assert result.origins["server.http.address"] == "flag"
    assert result.origins["server.http.enabled"] == "file"


def test_lists_are_replaced_not_merged(tmp_path: Path) -> None:
    cfg_file = _write(
        tmp_path / "config.yaml",
        "security:\n  auth:\n    allow_list: [10.0.0.0/8, 192.168.0.0/16]\n",
    )
    env = {"TOKMESH_SECURITY_AUTH_ALLOW_LIST": "127.0.0.1"}
    result = load_config(str(cfg_file), env, {}, tmp_path)
    assert result.config.security.auth.allow_list == ("127.0.0.1",)


def test_zero_config_uses_defaults_and_warns(tmp_path: Path) -> None:
    result = load_config(None, {}, {}, tmp_path, search_paths=[tmp_path / "nope.yaml"])
    assert result.errors == []
    assert result.source.file is None
    assert NO_FILE_WARNING in result.warnings
    assert result.config.server.http.address == "127.0.0.1:5080"
    assert result.config.server.https.enabled is False


# ---------------------------------------------------------------------------- discovery


def test_discovery_takes_the_first_existing_file(tmp_path: Path) -> None:
    first = tmp_path / "a" / "config.yaml"
    second = _write(tmp_path / "b" / "config.yaml", "telemetry: {logging: {level: warn}}\n")
    third = _write(tmp_path / "c" / "config.yaml", "telemetry: {logging: {level: error}}\n")
    result = load_config(None, {}, {}, tmp_path, search_paths=[first, second, third])
    assert result.source.file == str(second)
    assert result.config.telemetry.logging.level == "warn"
    assert NO_FILE_WARNING not in result.warnings


def test_default_search_order(tmp_path: Path) -> None:
    paths = default_search_paths(tmp_path, {"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/home/u"})
    assert paths == [
        Path("/etc/tokmesh-server/config.yaml"),
        tmp_path / "config.yaml",
        Path("/x/cfg/tokmesh-server/config.yaml"),
    ]
    paths = default_search_paths(tmp_path, {"HOME": "/home/u"})
    assert paths[2] == Path("/home/u/.config/tokmesh-server/config.yaml")


def test_cwd_config_yaml_is_found_by_default_search(tmp_path: Path) -> None:
    _write(tmp_path / "config.yaml", "server: {http: {address: '127.0.0.1:7000'}}\n")
    if Path("/etc/tokmesh-server/config.yaml").exists():
        pytest.skip("a system config file exists on this machine")
    result = load_config(None, {"HOME": str(tmp_path / "home")}, {}, tmp_path)
    assert result.source.file == str(tmp_path / "config.yaml")
    assert result.config.server.http.address == "127.0.0.1:7000"


@pytest.mark.parametrize("via", ["flag", "env"])
def test_explicit_missing_file_is_1003(tmp_path: Path, via: str) -> None:
    """05 §17 check 8."""
    missing = str(tmp_path / "nope.yaml")
    if via == "flag":
        result = load_config(missing, {}, {}, tmp_path, search_paths=[])
    else:
        env = {"TOKMESH_SERVER_CONFIG_FILE": missing}
        result = load_config(None, env, {}, tmp_path, search_paths=[])
    assert [(e.key, e.code.code) for e in result.errors] == [(missing, "TM-CFG-1003")]
    assert NO_FILE_WARNING not in result.warnings


def test_flag_beats_env_for_the_config_file(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", "telemetry: {logging: {level: debug}}\n")
    b = _write(tmp_path / "b.yaml", "telemetry: {logging: {level: error}}\n")
    result = load_config(str(a), {"TOKMESH_SERVER_CONFIG_FILE": str(b)}, {}, tmp_path)
    assert result.config.telemetry.logging.level == "debug"
    result = load_config(None, {"TOKMESH_SERVER_CONFIG_FILE": str(b)}, {}, tmp_path)
    assert result.config.telemetry.logging.level == "error"


# ---------------------------------------------------------------------------- YAML problems


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """05 §17 check 9: an error on line 7."""
    text = (
        "server:\n"
        "  http:\n"
        "    enabled: true\n"
        "    address: 127.0.0.1:5080\n"
        "telemetry:\n"
        "  logging:\n"
        "    level: debug: loud\n"
        "storage: {}\n"
    )
    path = _write(tmp_path / "config.yaml", text)
    result = load_config(str(path), {}, {}, tmp_path)
    assert len(result.errors) == 1
    issue = result.errors[0]
    assert issue.key == str(path)
    assert issue.code.code == "TM-CFG-1001"
    assert "line 7," in issue.problem


def test_unclosed_bracket_names_where_it_started(tmp_path: Path) -> None:
    text = "server:\n  http: {enabled: true\ntelemetry: {}\n"
    path = _write(tmp_path / "config.yaml", text)
    problem = load_config(str(path), {}, {}, tmp_path).errors[0].problem
    assert "started at line 2" in problem


def test_yaml_error_does_not_quote_the_line(tmp_path: Path) -> None:
    secret = "f" * 64
    path = _write(
        tmp_path / "config.yaml",
        f"security:\n  storage:\n    wal_encryption_key: {secret}\n  x: : :\n",
    )
    result = load_config(str(path), {}, {}, tmp_path)
    assert result.errors
    assert all(secret not in repr(e) for e in result.errors)


def test_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.yaml", "")
    result = load_config(str(path), {}, {}, tmp_path)
    assert result.errors == []
    assert result.config.server.http.enabled is True


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_top_level_is_1001(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "config.yaml", text)
    result = load_config(str(path), {}, {}, tmp_path)
    assert [(e.key, e.code.code) for e in result.errors] == [(str(path), "TM-CFG-1001")]


def test_unreadable_file_is_1004(nobody_dir: Path, as_nobody: Callable[..., Any]) -> None:
    """Checked as an unprivileged user: root reads every file."""
    path = nobody_dir / "config.yaml"
    path.write_text("server: {}\n")
    os.chmod(path, 0o600)

    def probe() -> list[tuple[str, str]]:
        result = load_config(str(path), {}, {}, nobody_dir)
        return [(e.key, e.code.code) for e in result.errors]

    assert as_nobody(probe) == [(str(path), "TM-CFG-1004")]


def test_unknown_keys_warn_with_dotted_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "config.yaml",
        "server:\n  http:\n    addr: 1.2.3.4:1\n    enabled: true\nbogus: 1\n",
    )
    result = load_config(str(path), {}, {}, tmp_path)
    assert result.errors == []
    assert any("'server.http.addr'" in w for w in result.warnings)
    assert any("'bogus'" in w for w in result.warnings)
    assert result.config.server.http.address == "127.0.0.1:5080"


def test_type_errors_in_the_file_are_all_collected(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "config.yaml",
        "server:\n"
        "  http: {enabled: 'yes please', max_body_size: lots}\n"
        "  https: 5\n"
        "session:\n"
        "  ttl: {default: 7200, sample_size: '20'}\n"
        "cluster:\n"
        "  discovery: {seeds: [a:1, 5]}\n"
        "  rebalance: {max_rate: 100MB}\n"
        "  node_id: {x: 1}\n",
    )
    result = load_config(str(path), {}, {}, tmp_path)
    got = sorted((e.key, e.code.code) for e in result.errors)
    assert got == sorted(
        [
            ("server.http.enabled", "TM-CFG-1001"),
            ("server.http.max_body_size", "TM-CFG-1001"),
            ("server.https", "TM-CFG-1001"),
            ("session.ttl.default", "TM-CFG-1001"),
            ("session.ttl.sample_size", "TM-CFG-1001"),
            ("cluster.discovery.seeds[1]", "TM-CFG-1001"),
            ("cluster.rebalance.max_rate", "TM-CFG-1001"),
            ("cluster.node_id", "TM-CFG-1001"),
        ]
    )
    # Values that failed keep their default.
    assert result.config.session.ttl.default == 7200.0


def test_bare_int_duration_is_1001_but_zero_is_allowed(tmp_path: Path) -> None:
    """05 §17 check 21."""
    path = _write(tmp_path / "config.yaml", "session: {ttl: {default: 7200}}\n")
    result = load_config(str(path), {}, {}, tmp_path)
    assert [(e.key, e.code.code) for e in result.errors] == [("session.ttl.default", "TM-CFG-1001")]
    path = _write(tmp_path / "config.yaml", "session: {touch_min_interval: 0}\n")
    assert load_config(str(path), {}, {}, tmp_path).errors == []


def test_null_values_mean_not_set(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.yaml", "server:\n  http:\n    address:\ncluster:\n")
    result = load_config(str(path), {}, {}, tmp_path)
    assert result.errors == []
    assert result.config.server.http.address == "127.0.0.1:5080"


def test_enum_values_are_case_insensitive(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.yaml", "telemetry: {logging: {level: DEBUG}}\n")
    assert load_config(str(path), {}, {}, tmp_path).config.telemetry.logging.level == "debug"


# ---------------------------------------------------------------------------- env typing


def test_env_list_is_split_and_trimmed(tmp_path: Path) -> None:
    """05 §17 check 5."""
    env = {"TOKMESH_CLUSTER_DISCOVERY_SEEDS": "a:5343, b:5343"}
    result = load_config(None, env, {}, tmp_path, search_paths=[])
    assert result.config.cluster.discovery.seeds == ("a:5343", "b:5343")
    env = {"TOKMESH_CLUSTER_DISCOVERY_SEEDS": ""}
    assert (
        load_config(None, env, {}, tmp_path, search_paths=[]).config.cluster.discovery.seeds == ()
    )


def test_env_bad_type_warns_names_variable_not_value(tmp_path: Path) -> None:
    """05 §17 check 6."""
    env = {
        "TOKMESH_CLUSTER_ENABLED": "maybe",
        "TOKMESH_SESSION_TTL_DEFAULT": "sevenhours",
        "TOKMESH_SERVER_HTTP_MAX_BODY_SIZE": "hugeish",
    }
    result = load_config(None, env, {}, tmp_path, search_paths=[])
    assert result.errors == []
    assert "ignoring TOKMESH_CLUSTER_ENABLED: invalid bool" in result.warnings
    assert "ignoring TOKMESH_SESSION_TTL_DEFAULT: invalid duration" in result.warnings
    assert "ignoring TOKMESH_SERVER_HTTP_MAX_BODY_SIZE: invalid size" in result.warnings
    text = "\n".join(result.warnings)
    for value in env.values():
        assert value not in text
    assert result.config.cluster.enabled is False
    assert result.source.env_overrides == ()


def test_legacy_env_names_hint_and_are_not_aliases(tmp_path: Path) -> None:
    """05 §17 check 7."""
    env = {"TOKMESH_SERVER_HTTP_ADDR": "0.0.0.0:1", "TOKMESH_LOG_FORMAT": "text"}
    result = load_config(None, env, {}, tmp_path, search_paths=[])
    assert result.config.server.http.address == "127.0.0.1:5080"
    hint = [w for w in result.warnings if "TOKMESH_SERVER_HTTP_ADDR:" in w]
    assert hint and "TOKMESH_SERVER_HTTP_ADDRESS" in hint[0]
    assert "0.0.0.0:1" not in "\n".join(result.warnings)
    assert any(w.startswith("ignoring TOKMESH_LOG_FORMAT") for w in result.warnings)


def test_unknown_env_warns_once_and_silent_list_is_silent(tmp_path: Path) -> None:
    env = {
        "TOKMESH_NOT_A_KEY": "1",
        "TOKMESH_API_KEY": "tmak-x:tmas_secret",
        "TOKMESH_API_KEY_ID": "tmak-x",
        "TOKMESH_CLI_CONFIG": "/x",
        "TOKMESH_TARGET": "prod",
        "TOKMESH_OUTPUT": "json",
        "TOKMESH_TIMEOUT": "5s",
        "TOKMESH_TLS_CA": "/ca",
        "PATH": "/usr/bin",
    }
    result = load_config(None, env, {}, tmp_path, search_paths=[])
    env_warnings = [w for w in result.warnings if "TOKMESH_" in w]
    assert env_warnings == ["ignoring TOKMESH_NOT_A_KEY: unknown TOKMESH_ variable"]


def test_env_out_of_range_is_not_a_type_error(tmp_path: Path) -> None:
    env = {"TOKMESH_SERVER_HTTP_ADDRESS": "127.0.0.1:99999"}
    result = load_config(None, env, {}, tmp_path, search_paths=[])
    assert result.config.server.http.address == "127.0.0.1:99999"  # validation rejects it


# ---------------------------------------------------------------------------- flags


def test_flags_parse_bare_and_explicit_bools(tmp_path: Path) -> None:
    """05 §17 check 10 (library part)."""
    flags = {"--server.http.enabled": "false", "--server.https.enabled": "true"}
    result = load_config(None, {}, flags, tmp_path, search_paths=[])
    assert result.errors == []
    assert result.config.server.http.enabled is False
    assert result.config.server.https.enabled is True
    assert result.source.cli_overrides == ("--server.http.enabled", "--server.https.enabled")


def test_kebab_flags_map_to_snake_keys(tmp_path: Path) -> None:
    flags = {"--cluster.node-id": "node-a", "telemetry.logging.dump-config": "true"}
    result = load_config(None, {}, flags, tmp_path, search_paths=[])
    assert result.config.cluster.node_id == "node-a"
    assert result.config.telemetry.logging.dump_config is True
    assert "--cluster.node-id" in result.source.cli_overrides


def test_parse_flag_value_for_the_cli() -> None:
    assert parse_flag_value("--storage.wal.sync-mode", "SYNC") == "sync"
    assert parse_flag_value("cluster.enabled", "1") is True
    with pytest.raises(KeyError):
        parse_flag_value("--bogus.flag", "1")
    with pytest.raises(KeyError):
        parse_flag_value("--session.ttl.default", "1h")  # not one of the 14 flags
    with pytest.raises(ConfigValueError):
        parse_flag_value("--server.http.enabled", "maybe")


def test_bad_flag_value_is_an_error(tmp_path: Path) -> None:
    result = load_config(None, {}, {"--cluster.enabled": "maybe"}, tmp_path, search_paths=[])
    assert [(e.key, e.code.code) for e in result.errors] == [("cluster.enabled", "TM-CFG-1001")]


# ---------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_dir(tmp_path: Path) -> None:
    """05 §17 check 11: cwd is "/", the file is in <tmp>/p."""
    path = _write(
        tmp_path / "p" / "config.yaml",
        "server:\n  https:\n    tls:\n      cert_file: ./certs/s.crt\n      key_file: ''\n",
    )
    env = {"TOKMESH_SERVER_REDIS_TLS_TLS_KEY_FILE": "keys/r.key"}
    result = load_config(str(path), env, {"--storage.snapshot.dir": "snaps"}, Path("/"))
    cfg = result.config
    assert cfg.server.https.tls.cert_file == str(tmp_path / "p" / "certs" / "s.crt")
    assert cfg.server.https.tls.key_file == ""
    assert cfg.server.redis_tls.tls.key_file == str(tmp_path / "p" / "keys" / "r.key")
    assert cfg.storage.snapshot.dir == str(tmp_path / "p" / "snaps")
    assert cfg.storage.wal.dir == str(tmp_path / "p" / "data" / "wal")
    assert cfg.server.local.socket_path == "/var/run/tokmesh-server/tokmesh-server.sock"


def test_relative_paths_use_cwd_without_a_file(tmp_path: Path) -> None:
    result = load_config(None, {}, {}, tmp_path, search_paths=[])
    assert result.config.storage.wal.dir == str(tmp_path / "data" / "wal")
    assert result.config.storage.snapshot.dir == str(tmp_path / "data" / "snapshots")


def test_relative_config_path_is_relative_to_cwd(tmp_path: Path) -> None:
    _write(tmp_path / "sub" / "c.yaml", "cluster: {node_id: n1}\n")
    result = load_config("sub/c.yaml", {}, {}, tmp_path)
    assert result.source.file == str(tmp_path / "sub" / "c.yaml")
    assert result.config.storage.wal.dir == str(tmp_path / "sub" / "data" / "wal")


# ---------------------------------------------------------------------------- config.d


def test_config_d_fragments_merge_in_lexical_order(tmp_path: Path) -> None:
    """05 §17 check 12."""
    main = _write(
        tmp_path / "config.yaml",
        "telemetry: {logging: {level: info}}\nsession: {quota: {max_per_user: 7}}\n",
    )
    _write(tmp_path / "config.d" / "10-a.yaml", "telemetry: {logging: {level: debug}}\n")
    _write(tmp_path / "config.d" / "20-b.yaml", "session: {ttl: {gc_interval: 200ms}}\n")
    _write(tmp_path / "config.d" / "05-z.yaml", "telemetry: {logging: {level: error}}\n")
    _write(tmp_path / "config.d" / "99-ignored.yml", "telemetry: {logging: {level: warn}}\n")
    (tmp_path / "config.d" / "30-dir.yaml").mkdir()
    result = load_config(str(main), {}, {}, tmp_path)
    assert result.errors == []
    assert result.config.telemetry.logging.level == "debug"  # 10-a after 05-z
    assert result.config.session.quota.max_per_user == 7
    assert result.config.session.ttl.gc_interval == pytest.approx(0.2)
    assert result.source.fragments == (
        str(tmp_path / "config.d" / "05-z.yaml"),
        str(tmp_path / "config.d" / "10-a.yaml"),
        str(tmp_path / "config.d" / "20-b.yaml"),
    )
    env = {"TOKMESH_TELEMETRY_LOGGING_LEVEL": "warn"}
    assert load_config(str(main), env, {}, tmp_path).config.telemetry.logging.level == "warn"


def test_bad_fragment_is_an_error_naming_it(tmp_path: Path) -> None:
    main = _write(tmp_path / "config.yaml", "{}\n")
    bad = _write(tmp_path / "config.d" / "10-bad.yaml", "telemetry: [\n")
    result = load_config(str(main), {}, {}, tmp_path)
    assert [(e.key, e.code.code) for e in result.errors] == [(str(bad), "TM-CFG-1001")]


def test_fragment_paths_resolve_against_main_dir(tmp_path: Path) -> None:
    main = _write(tmp_path / "config.yaml", "{}\n")
    _write(tmp_path / "config.d" / "10.yaml", "storage: {wal: {dir: w}}\n")
    result = load_config(str(main), {}, {}, tmp_path / "elsewhere")
    assert result.config.storage.wal.dir == str(tmp_path / "w")


def test_no_fragments_without_a_main_file(tmp_path: Path) -> None:
    _write(tmp_path / "config.d" / "10.yaml", "telemetry: {logging: {level: debug}}\n")
    result = load_config(None, {}, {}, tmp_path, search_paths=[])
    assert result.config.telemetry.logging.level == "info"
    assert result.source.fragments == ()


# ---------------------------------------------------------------------------- text input


def test_load_yaml_text_ignores_env_and_resolves_against_base(tmp_path: Path) -> None:
    result = load_yaml_text("storage: {wal: {dir: w}}\n", base_dir=tmp_path)
    assert result.errors == []
    assert result.config.storage.wal.dir == str(tmp_path / "w")
    bad = load_yaml_text("a: [", base_dir=tmp_path)
    assert bad.errors and bad.errors[0].key == "config_yaml"
