"""model/ borrows from the curation stages through one module, model/curation_tools.py."""

from __future__ import annotations

import ast
from pathlib import Path

MODEL = Path(__file__).resolve().parents[2] / "model"


def test_only_curation_tools_imports_stages():
    importers = set()
    for path in sorted(MODEL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("stages", "pipeline") for n in names):
                importers.add(path.name)
    assert importers == {"curation_tools.py"}
