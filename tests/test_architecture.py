"""The house rules that keep the stages apart, the files small and the imports acyclic (ARCHITECTURE.md)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "butd"
FORBIDDEN = {
    "extract": ("butd.train", "butd.models", "butd.evaluate", "butd.datasets", "butd.tasks", "butd.cli"),
    "train": ("butd.extract", "butd.tasks", "butd.cli"),
    "models": ("butd.extract", "butd.train", "butd.datasets", "butd.tasks", "butd.cli"),
    "datasets": ("butd.extract", "butd.train", "butd.tasks", "butd.cli"),
    "evaluate": ("butd.extract", "butd.tasks", "butd.cli"),
    "shards": ("butd.extract", "butd.train", "butd.models", "butd.datasets", "butd.evaluate", "butd.tasks",
               "butd.cli"),
    "tasks": ("butd.cli",),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every module an import statement names, at any depth (function-level imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
    return names


def _butd_edges() -> dict[str, set[str]]:
    return {m: {n for n in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_stages_meet_only_through_the_shard_contract(stage):
    bad = []
    for path in sorted((SRC / stage).rglob("*.py")):
        for name in _imports(path):
            if name.startswith(FORBIDDEN[stage]):
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "\n".join(bad)


def test_only_the_cli_package_imports_click():
    bad = [str(p.relative_to(SRC)) for m, p in MODULES.items()
           if not m.startswith("butd.cli") and any(n == "click" or n.startswith("click.") for n in _imports(p))]
    assert not bad, bad


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    # a package's __init__ importing its own submodules is how packages re-export; not a cycle by itself
    edges = {m: {n for n in e if not (MODULES[m].name == "__init__.py" and n.startswith(m + "."))}
             for m, e in _butd_edges().items()}
    assert _cycles(edges) == []


def test_every_module_is_at_most_350_lines():
    long = [f"{p.relative_to(SRC)}: {n}" for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350]
    assert not long, long


def test_nothing_unpickles_outside_the_restricted_unpickler():
    allowed = {"shards/legacy_pickle.py"}
    hits = []
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        text = path.read_text()
        if rel not in allowed and ("pickle.load" in text or "allow_pickle=True" in text):
            hits.append(rel)
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                hits.append(f"{rel}: {line.strip()}")
    assert not hits, hits


def test_no_process_wide_mutation():
    """No os.environ writes and no patching of other packages' modules (the Ray setup uses ray.init)."""
    hits = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ":
                    hits.append(f"{path.relative_to(SRC)}: {ast.unparse(node)}")
                if isinstance(t, ast.Attribute) and ast.unparse(t.value).endswith("ray_constants"):
                    hits.append(f"{path.relative_to(SRC)}: {ast.unparse(node)}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.pop", "os.environ.update",
                                                                          "os.environ.setdefault", "os.putenv"):
                hits.append(f"{path.relative_to(SRC)}: {ast.unparse(node)}")
    assert not hits, hits
