"""The package's shape (docs/architecture.md): no import cycles, a report that runs no network, short files."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "affinitynet"
MAX_LINES = 350


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def module_imports(name: str) -> set[str]:
    """Modules of this package imported at module level (imports inside functions are deferred on purpose)."""
    path = MODULES[name]
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("affinitynet")}
        elif isinstance(node, ast.ImportFrom):
            target = node.module if node.level == 0 else _resolve(name, path.name == "__init__.py", node.level,
                                                                  node.module)
            if not target or not target.startswith("affinitynet"):
                continue
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES}
    return {m for m in out if m in MODULES and m != name}


GRAPH = {m: module_imports(m) for m in MODULES}


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in GRAPH[m]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_no_import_cycles():
    cycles = sorted(m for m in GRAPH if m in _reachable(m))
    assert cycles == [], f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("module", ["affinitynet.report", "affinitynet.views"])
def test_presentation_imports_no_models_or_stages(module):
    bad = sorted(m for m in _reachable(module) | {module}
                 if m.startswith(("affinitynet.models", "affinitynet.stages", "affinitynet.engine")))
    assert bad == []


def test_no_source_file_over_the_limit():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_the_import_graph_sees_real_edges():
    """The checker itself: known imports are found (a checker that finds nothing would pass everything)."""
    assert "affinitynet.stages.make_cam" in GRAPH["affinitynet.stages"]
    assert "affinitynet.layout" in GRAPH["affinitynet.runner"]
    assert "affinitynet.conventions" in GRAPH["affinitynet.ops.cam"]
