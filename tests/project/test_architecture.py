"""The house rules, checked from the source: imports point one way (no cycle, each layer imports only layers
below it), config is pure data, nothing outside lmssl/objectives asks an objective what it is, the heavy
optional packages are imported in one module each, every file lands on disk through lmssl.storage.atomic, and every
module stays small."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "lmssl"

# bottom-up; a module belongs to the longest prefix that names it (the README's architecture section draws this)
LAYERS = [
    ("lmssl", "lmssl.errors", "lmssl.storage"),
    ("lmssl.config",),
    ("lmssl.data",),
    ("lmssl.model",),
    ("lmssl.interop", "lmssl.interop.hf", "lmssl.interop.hf.rules", "lmssl.interop.hf.source",
     "lmssl.interop.hf.adapter"),
    ("lmssl.objectives",),
    ("lmssl.distributed", "lmssl.engine"),
    ("lmssl.checkpoint", "lmssl.checkpoint.format"),
    ("lmssl.interop.hf.importer",),
    ("lmssl.checkpoint.model_dir",),
    ("lmssl.interop.hf.model_card", "lmssl.interop.hf.export"),
    ("lmssl.evaluation", "lmssl.inference"),
    ("lmssl.evaluate_modules",),
    ("lmssl.downstream", "lmssl.inference.api"),
    ("lmssl.training",),
    ("lmssl.study",),
    ("lmssl.cli", "lmssl.__main__", "lmssl.evaluate_modules.lmssl_glue", "lmssl.evaluate_modules.lmssl_perplexity",
     "lmssl.evaluate_modules.lmssl_pseudo_perplexity", "lmssl.evaluate_modules.lmssl_sts"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """module -> the lmssl modules it imports, counting imports written inside functions too. `from a import b`
    is an edge to a.b when that is a module, else to a (its __init__)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer of LAYERS"
    return rank


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_every_import_statement():
    graph = import_graph()
    assert len(graph) > 50
    assert "lmssl.data.paths" in graph["lmssl.data.build"]  # from a.b import c (c a function)
    assert "lmssl.config" in graph["lmssl.data.paths"]  # from a import b (b re-exported by a/__init__)
    assert "lmssl.interop.hf.export" in graph["lmssl.cli.model_commands"]  # written inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in import_graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def test_config_imports_no_torch_and_no_other_lmssl_module():
    code = ("import sys, lmssl.config; assert 'torch' not in sys.modules, 'torch imported'; "
            "print(sorted(m for m in sys.modules if m.startswith('lmssl')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = eval(proc.stdout)
    assert all(m in ("lmssl", "lmssl.errors") or m.startswith("lmssl.config") for m in loaded), loaded
    graph = import_graph()
    for name in graph:
        if name.startswith("lmssl.config"):
            assert all(t == "lmssl.errors" or t.startswith("lmssl.config") for t in graph[name]), (name, graph[name])


# what asking an objective what it is looks like: its attributes, its type, its name
INTROSPECTION = re.compile(r"(getattr|hasattr|isinstance)\(\s*(objective|source|obj)\b"
                           r"|objective\.name\s*[=!]=\s*[\"']|name\s*==\s*\"(mlm|clm|electra|simcse)\""
                           r"|\bobjective\.(trunk|head|generator|pooler|mlp|seq_relationship|ocfg)\b")


def test_nothing_outside_objectives_asks_an_objective_what_it_is():
    found = [f"{path.relative_to(REPO_ROOT)}:{i}: {line.strip()}"
             for name, path in modules().items() if not name.startswith("lmssl.objectives")
             for i, line in enumerate(path.read_text().splitlines(), 1) if INTROSPECTION.search(line)]
    assert not found, "\n".join(found)


def test_heavy_optional_packages_are_imported_in_one_module_each():
    for package, owner in (("deepspeed", "lmssl.engine.deepspeed_engine"), ("flash_attn", "lmssl.model.flash")):
        importers = {name for name, path in modules().items()
                     if re.search(rf"^\s*(import {package}|from {package}[ .])", path.read_text(), re.M)}
        assert importers == {owner}, (package, importers)


def test_files_land_on_disk_through_the_one_atomic_helper():
    renames = re.compile(r"\bos\.replace\(|\.rename\(|tempfile\.mkdtemp|tempfile\.mkstemp")
    found = [f"{path.relative_to(REPO_ROOT)}:{i}" for name, path in modules().items() if name != "lmssl.storage.atomic"
             for i, line in enumerate(path.read_text().splitlines(), 1) if renames.search(line)]
    assert not found, found


def test_modules_stay_small():
    big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert not big, big
