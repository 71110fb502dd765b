"""docs/configuration.md documents every schema key (and nothing that is not one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tokmesh.config.schema import KEYS

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `([a-z0-9_.]+)` \|(.*)$", re.MULTILINE)


def _rows() -> dict[str, str]:
    return {m.group(1): m.group(2) for m in ROW.finditer(DOC.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("key", list(KEYS))
def test_every_schema_key_has_a_reference_row(key: str) -> None:
    rows = _rows()
    assert key in rows, f"{key} is not documented in docs/configuration.md"
    spec = KEYS[key]
    row = rows[key]
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)]
    assert cells[0] == spec.kind.value, f"{key}: documented type differs from the schema"
    assert cells[1] == f"`{spec.default_text}`", f"{key}: documented default differs"
    assert cells[4] == f"`{spec.env}`", f"{key}: documented env var differs"
    assert ("♻" in cells[3]) == spec.hot, f"{key}: hot-reload mark differs"


def test_no_documented_key_is_unknown() -> None:
    unknown = set(_rows()) - set(KEYS)
    assert not unknown, f"documented but not in the schema: {sorted(unknown)}"
