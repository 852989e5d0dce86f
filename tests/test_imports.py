"""Imports flow one way along the data flow (STYLE.md principle 10)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sdcompress"
# Lower number = earlier in the data flow. Shared helpers (errors, io, ...) are layer 0.
LAYERS = {
    "errors": 0, "io": 0, "progress": 0, "config": 0, "hub": 0,
    "data": 1, "models": 2, "linalg": 3, "train": 4, "estimator": 5, "plan": 6,
    "compress": 7, "evaluate": 8, "report": 9, "pipeline": 10, "api": 11,
    "callback": 11, "recipe": 11, "experiments": 12, "cli": 13, "__main__": 14,
}


def _layer(module_parts: list[str]) -> int | None:
    if not module_parts or module_parts[0] != "sdcompress":
        return None
    if len(module_parts) == 1:  # `import sdcompress` / `from sdcompress import x`: the lazy root
        return 12
    return LAYERS.get(module_parts[1])


def test_imports_flow_one_way():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) == 2:
            continue  # the package root re-exports lazily
        own = _layer(parts if parts[-1] != "__init__" else parts[:-1])
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                layer = _layer(t.split("."))
                if layer is not None and layer > own:
                    bad.append(f"{rel} (layer {own}) imports {t} (layer {layer})")
    assert not bad, "upstream imports:\n" + "\n".join(bad)


def test_every_subpackage_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in PKG.iterdir() if not p.name.startswith("__") or p.name == "__main__.py"}
    names = {n for n in names if not n.startswith(".") and n != "__pycache__"}
    assert names <= set(LAYERS), f"give these a layer in tests/test_imports.py: {sorted(names - set(LAYERS))}"
