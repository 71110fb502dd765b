"""Node identity (ruling R1): configured, else persisted ``tmnd-`` + ULID in ``node-id``."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from tokmesh.config.node_id import NODE_ID_FILE, data_dir_of, resolve_node_id
from tokmesh.config.schema import Config, build_config
from tokmesh.domain.errors import TokMeshError

NODE_ID_RE = re.compile(r"tmnd-[0-7][0-9a-hjkmnp-tv-z]{25}")


def _cfg(tmp_path: Path, node_id: str = "") -> Config:
    return build_config(
        {"storage.wal.dir": str(tmp_path / "data" / "wal"), "cluster.node_id": node_id}
    )


def test_configured_node_id_wins(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "tokmesh-0")
    assert resolve_node_id(cfg) == "tokmesh-0"
    assert not (tmp_path / "data").exists()


def test_generated_once_persisted_0600_and_reused(tmp_path: Path) -> None:
    """05 §17 check 19 as overruled by R1."""
    cfg = _cfg(tmp_path)
    assert data_dir_of(cfg) == tmp_path / "data"
    first = resolve_node_id(cfg)
    assert NODE_ID_RE.fullmatch(first)
    path = tmp_path / "data" / NODE_ID_FILE
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list((tmp_path / "data").glob(".*tmp"))
    # A "restart": same config, same file, same id.
    assert resolve_node_id(_cfg(tmp_path)) == first


def test_existing_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / NODE_ID_FILE).write_text("tmnd-01j00000000000000000000000\n")
    assert resolve_node_id(_cfg(tmp_path)) == "tmnd-01j00000000000000000000000"


def test_explicit_data_dir(tmp_path: Path) -> None:
    node_id = resolve_node_id(_cfg(tmp_path), data_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / NODE_ID_FILE).read_text().strip() == node_id


@pytest.mark.parametrize("content", ["", "   \n", "bad id with spaces", "../etc"])
def test_unusable_file_is_an_error_not_replaced(tmp_path: Path, content: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / NODE_ID_FILE).write_text(content)
    with pytest.raises(TokMeshError) as info:
        resolve_node_id(_cfg(tmp_path))
    assert info.value.code == "TM-CFG-1001"
    assert (tmp_path / "data" / NODE_ID_FILE).read_text() == content
