"""Dependencies point one way: the actors never import the services or the front ends,
and the modules below both (domain, readiness) import neither."""

from __future__ import annotations

import ast
from pathlib import Path

import tokmesh

ROOT = Path(tokmesh.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in paths
        for name in _imports(path)
        if name.startswith(forbidden)
    )


def test_actors_do_not_import_services_or_front_ends() -> None:
    above = ("tokmesh.services", "tokmesh.api", "tokmesh.resp", "tokmesh.cluster", "tokmesh.server")
    assert _offending(sorted((ROOT / "actors").glob("*.py")), above) == []


def test_domain_and_readiness_import_no_layer_above_them() -> None:
    paths = [*sorted((ROOT / "domain").glob("*.py")), ROOT / "readiness.py"]
    above = ("tokmesh.actors", "tokmesh.services", "tokmesh.api", "tokmesh.resp", "tokmesh.storage")
    assert _offending(paths, above) == []
