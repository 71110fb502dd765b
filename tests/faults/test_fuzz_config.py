"""Fuzzing the server configuration loader and validator (``tokmesh.config``).

Whatever a configuration file, a ``config.d`` fragment, the environment or the admin
API's partial apply holds, loading and validating it ends in one of two ways: a
configuration whose every value has its key's type (finite numbers included), or
``TM-CFG-*`` errors, each naming the key (or the file) it is about. Nothing else escapes,
and a value that came from the environment never appears in a message.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.faults.fuzz_support import fuzz_settings
from tokmesh.config.issues import ConfigIssue
from tokmesh.config.loader import LoadResult, load_config, load_yaml_text
from tokmesh.config.reload import apply_partial
from tokmesh.config.schema import KEYS, SECTIONS, Config, Kind, config_to_flat, default_config
from tokmesh.config.validate import ValidationReport, validate_config

pytestmark = pytest.mark.fault

#: Marks values that came from the environment: never to be shown in any message.
SECRET_MARK = "zq7#"

_TYPES: dict[Kind, tuple[type, ...]] = {
    Kind.BOOL: (bool,),
    Kind.INT: (int,),
    Kind.FLOAT: (float,),
    Kind.DURATION: (float,),
    Kind.SIZE: (int,),
    Kind.RATE: (int,),
    Kind.STR_LIST: (tuple,),
    Kind.ADDR_LIST: (tuple,),
}


def check_issues(issues: list[ConfigIssue], labels: set[str]) -> None:
    """Every issue is a ``TM-CFG-*`` error about a key, a section or a file."""
    for issue in issues:
        assert issue.code.code.startswith("TM-CFG-"), issue
        base = issue.key.split("[", 1)[0]
        assert base in KEYS or base in SECTIONS or base in labels, issue
        assert issue.problem and issue.message


def check_config(cfg: Config) -> None:
    """Every value has its key's canonical type, and numbers are finite."""
    flat = config_to_flat(cfg)
    for name, spec in KEYS.items():
        value = flat[name]
        expected = _TYPES.get(spec.kind, (str,))
        assert isinstance(value, expected), (name, value)
        if spec.kind in (Kind.INT, Kind.SIZE, Kind.RATE):
            assert not isinstance(value, bool), (name, value)
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)
        if isinstance(value, tuple):
            assert all(isinstance(item, str) for item in value), (name, value)
        if isinstance(value, str):
            assert "\x00" not in value, name


def outcome(result: LoadResult, labels: set[str]) -> ValidationReport:
    """Validate a load result and check both against the contract."""
    check_issues(result.errors, labels)
    report = validate_config(result.config, origins=result.origins)
    check_issues(report.errors, labels)
    if not result.errors:
        check_config(result.config)
    return report


# -- values ------------------------------------------------------------------------------

_UNITS = ["", "ns", "us", "µs", "ms", "s", "m", "h", "B", "KB", "MB", "GB", "Kbps", "MBps", "x"]
number_text = st.builds(
    lambda sign, digits, frac, unit: f"{sign}{digits}{frac}{unit}",
    st.sampled_from(["", "-", "+"]),
    st.sampled_from(["0", "1", "7", "99", "1024", "9" * 30, "9" * 400]),
    st.sampled_from(["", ".5", ".", "e5", "e400"]),
    st.sampled_from(_UNITS),
)
special_text = st.sampled_from(
    [
        "",
        " ",
        "true",
        "1",
        "nan",
        "inf",
        "-inf",
        "1e999",
        "127.0.0.1:80",
        "[::1]:5443",
        "[::1",
        "host:99999",
        ":0",
        "a\x00b",
        "a\x00b:80",
        "x" * 300,
        "0x1F",
        "1_000",
        "2001-02-30",
        "http://",
        "10.0.0.0/33",
        "a,b,,c",
        "ECDHE+AESGCM",
        "debug",
        "BATCH",
        "../outside",
    ]
)
text_value = st.one_of(number_text, special_text, st.text(max_size=20))
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    text_value,
)
yaml_value = st.recursive(
    scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
key_name = st.one_of(
    st.sampled_from(sorted(KEYS)),
    st.sampled_from(sorted(SECTIONS)),
    st.text(max_size=10),
)


@st.composite
def config_tree(draw: st.DrawFn) -> dict[str, Any]:
    """A YAML mapping of schema keys (and some others), nested by their dots."""
    tree: dict[str, Any] = {}
    for name, value in draw(st.lists(st.tuples(key_name, yaml_value), max_size=6)):
        parts = name.split(".") if name else [name]
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return tree


#: Nine to the eighth strings in a few hundred bytes, through YAML aliases.
BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, n in zip("abcdefg", "bcdefgh", strict=True)
    )
    + "security: {auth: {allow_list: [*h]}, network: {trusted_proxies: *h}}\n"
    + "session: {ttl: {default: *h}}\n"
)

#: Hand-written YAML that reaches the corners of the YAML parser itself.
YAML_TEXTS = [
    "storage:\n  wal:\n    dir: 2001-02-30\n",
    "a: 2001-02-30",
    "? !!timestamp 2001-13-01\n: 1",
    "session:\n  ttl:\n    default: !!float abc\n",
    "session:\n  quota:\n    max_per_user: !!int abc\n",
    "x: !!binary '@@@'",
    "x: !!python/object:os.system {}",
    "a: &a [*a]",
    "a: *missing",
    "<<: 5",
    "[" * 500,
    "{" * 500,
    "- " * 500,
    "a: b: c",
    "\t",
    "%YAML 9.9\n---\na: 1",
    "--- !!set\n? a\n",
    "session: {ttl: {default: .nan}}",
    "telemetry: {tracing: {sampling_ratio: .nan}}",
    "storage: {badger: {gc_threshold: .inf}}",
    "session: {ttl: {default: 1.0e300}}",
    "session: {ttl: {max: '" + "9" * 300 + "h'}}",
    "storage: {wal: {batch_size: '" + "9" * 400 + "GB'}}",
    "cluster: {rebalance: {max_rate: '" + "9" * 400 + "Mbps'}}",
    'storage: {wal: {dir: "a\\0b"}}',
    'server: {http: {address: "a\\0b:80"}}',
    "storage: {wal: {dir: " + "d" * 300 + "}}",
    BOMB,
]


def _load_text(text: str) -> ValidationReport:
    with tempfile.TemporaryDirectory() as tmp:
        result = load_yaml_text(text, base_dir=Path(tmp), label="config_yaml")
        report = outcome(result, {"config_yaml"})
    for issue in [*result.errors, *report.errors]:
        # Never more than the text itself: the admin API returns these.
        assert len(issue.value or "") <= len(text) + 64, (issue.key, len(issue.value or ""))
    return report


@fuzz_settings(150)
@given(tree=config_tree())
def test_any_yaml_mapping_gives_a_typed_config_or_config_errors(tree: dict[str, Any]) -> None:
    _load_text(yaml.safe_dump(tree, allow_unicode=True))


@fuzz_settings(150)
@given(text=st.sampled_from(YAML_TEXTS) | st.text(max_size=80))
# Each of these raised out of the loader (ValueError, RecursionError, OverflowError and
# ValueError from formatting .nan as a duration), loaded a NaN, or printed gigabytes.
@example(text="a: 2001-02-30")
@example(text="session:\n  quota:\n    max_per_user: !!int abc\n")
@example(text="[" * 500)
@example(text="storage: {wal: {batch_size: '" + "9" * 400 + "GB'}}")
@example(text="session: {ttl: {default: .nan}}")
@example(text="session: {ttl: {max: '" + "9" * 300 + "h'}}")
@example(text="telemetry: {tracing: {sampling_ratio: .nan}}")
@example(text=BOMB)
def test_any_yaml_text_gives_a_typed_config_or_config_errors(text: str) -> None:
    _load_text(text)


@fuzz_settings(80)
@given(
    main=st.binary(max_size=60) | st.sampled_from(YAML_TEXTS).map(str.encode),
    fragment=st.binary(max_size=40),
)
def test_any_file_bytes_give_a_typed_config_or_config_errors(main: bytes, fragment: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "config.yaml").write_bytes(main)
        (root / "config.d").mkdir()
        (root / "config.d" / "10-extra.yaml").write_bytes(fragment)
        result = load_config(str(root / "config.yaml"), {}, {}, root)
        labels = {str(root / "config.yaml"), str(root / "config.d" / "10-extra.yaml")}
        outcome(result, labels)


# -- the environment ---------------------------------------------------------------------

env_name = st.one_of(
    st.sampled_from(sorted(spec.env for spec in KEYS.values())),
    st.builds(lambda s: "TOKMESH_" + s, st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", max_size=12)),
)
# The operating system keeps no NUL byte in an environment value.
env_value = st.builds(
    lambda text, marked: text + SECRET_MARK if marked else text,
    (text_value | st.text(max_size=12)).map(lambda t: t.replace("\x00", "")),
    st.booleans(),
)


@fuzz_settings(150)
@given(env=st.dictionaries(env_name, env_value, max_size=6))
@example(env={"TOKMESH_STORAGE_WAL_BATCH_SIZE": "9" * 400 + "GB"})
@example(env={"TOKMESH_CLUSTER_REBALANCE_MAX_RATE": "9" * 400 + "Mbps"})
@example(env={"TOKMESH_SESSION_TTL_MAX": "9" * 300 + "h" + SECRET_MARK})
def test_any_environment_gives_a_typed_config_warnings_or_config_errors(
    env: dict[str, str],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = load_config(None, env, {}, Path(tmp), search_paths=[])
        report = outcome(result, set())
    shown = [*result.warnings, *report.warnings]
    for issue in [*result.errors, *report.errors]:
        shown += [issue.key, issue.problem, issue.expected, issue.value or "", issue.solution]
    assert not any(SECRET_MARK in line for line in shown), shown


# -- the admin API's partial apply -------------------------------------------------------


@fuzz_settings(100)
@given(tree=config_tree())
@example(tree={"telemetry": {"logging": {"level": float("nan")}}})
def test_any_partial_apply_gives_a_config_or_config_errors(tree: dict[str, Any]) -> None:
    result = apply_partial(default_config(), tree)
    check_issues(result.errors, {"request"})
    if not result.errors:
        check_config(result.config)


_RELATIVE = st.text("abcxyz019 ._-/\\\x00\x01é", min_size=1, max_size=30).filter(
    lambda t: ".." not in t and not t.startswith(("/", "~"))
)


@fuzz_settings(60)
@given(wal=_RELATIVE | st.just("d" * 300), snapshots=_RELATIVE)
@example(wal="wal\x00dir", snapshots="snapshots")  # mkdir raised ValueError at start-up
@example(wal="d" * 300, snapshots="snapshots")  # exists() raised ENAMETOOLONG
def test_a_real_start_never_crashes_on_directory_values(wal: str, snapshots: str) -> None:
    text = yaml.safe_dump({"storage": {"wal": {"dir": wal}, "snapshot": {"dir": snapshots}}})
    with tempfile.TemporaryDirectory() as tmp:
        result = load_yaml_text(text, base_dir=Path(tmp), label="config_yaml")
        check_issues(result.errors, {"config_yaml"})
        report = validate_config(result.config, origins=result.origins, create_dirs=True)
        check_issues(report.errors, {"config_yaml"})


_PEM_JUNK = st.sampled_from(
    [
        b"",
        b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    ]
) | st.binary(max_size=64)


@fuzz_settings(80)
@given(
    values=st.fixed_dictionaries(
        {
            "cert": text_value,
            "key": text_value,
            "ca": text_value,
            "endpoint": text_value,
            "node_id": text_value,
            "advertise": text_value,
            "listen": text_value,
            "seeds": st.lists(text_value, max_size=3),
            "ciphers": text_value,
        }
    ),
    files=st.dictionaries(st.sampled_from(["cert.pem", "key.pem", "ca.pem"]), _PEM_JUNK),
)
@example(
    values={
        "cert": "cert.pem",
        "key": "key.pem",
        "ca": "ca.pem",
        "endpoint": "http://[::1",  # urlsplit raised ValueError
        "node_id": "n1",
        "advertise": "10.0.0.1:5343",
        "listen": "0.0.0.0:5343",
        "seeds": ["10.0.0.2:5343"],
        "ciphers": "ECDHE+AESGCM",
    },
    files={},
)
def test_the_checks_of_enabled_features_give_config_errors(
    values: dict[str, Any], files: dict[str, bytes]
) -> None:
    tls = {"cert_file": values["cert"], "key_file": values["key"]}
    tls["client_ca_file"] = values["ca"]
    tree = {
        "server": {
            "https": {"enabled": True, "tls": tls},
            "redis_tls": {"enabled": True, "tls": tls},
        },
        "cluster": {
            "enabled": True,
            "node_id": values["node_id"],
            "listen_address": values["listen"],
            "advertise_address": values["advertise"],
            "discovery": {"seeds": values["seeds"]},
            "tls": tls,
        },
        "telemetry": {"tracing": {"enabled": True, "endpoint": values["endpoint"]}},
        "security": {"tls": {"ciphers": values["ciphers"]}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        result = load_yaml_text(yaml.safe_dump(tree), base_dir=Path(tmp), label="config_yaml")
        outcome(result, {"config_yaml"})
