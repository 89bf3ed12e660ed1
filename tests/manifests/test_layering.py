"""manifests/ is the data layer: it imports nothing from the packages built on it."""

from __future__ import annotations

import ast
from pathlib import Path

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def test_manifests_imports_nothing_from_pipeline_stages_or_model():
    found = []
    for path in sorted(MANIFESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("pipeline", "stages", "model")]
    assert not found, found
