"""The house rules that keep the stages apart, the files small and the imports acyclic (ARCHITECTURE.md)."""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "butd"
ARCHITECTURE = SRC.parents[1] / "ARCHITECTURE.md"
BASE = {"butd", "butd.config", "butd.registry", "butd.errors", "butd.devices"}


def allowed_imports(text: str) -> dict[str, set[str]]:
    """ARCHITECTURE.md's import table: package -> the packages it may import (besides the base and itself)."""
    table: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`butd."):
            continue
        pkg = cells[0].strip("`")
        table[pkg] = {"butd." + m for m in re.findall(r"`([a-z_]+)`", cells[2])}
    return table


def package_of(module: str) -> str:
    """``butd.tasks.caption`` -> ``butd.tasks``; top-level modules are their own package."""
    parts = module.split(".")
    return ".".join(parts[:2])


def outside_the_table(edges: dict[str, set[str]], table: dict[str, set[str]]) -> list[str]:
    """Every import between packages that the table does not allow (a package missing from it: all of its)."""
    bad = []
    for module, names in sorted(edges.items()):
        pkg = package_of(module)
        if pkg in BASE:
            allowed = BASE
        else:
            allowed = BASE | table.get(pkg, set()) | {pkg}
        bad += [f"{module} imports {n}" for n in sorted(names) if package_of(n) not in allowed]
    return bad


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


def test_every_import_between_packages_is_in_the_architecture_table():
    table = allowed_imports(ARCHITECTURE.read_text(encoding="utf-8"))
    packages = {package_of(m) for m in MODULES} - BASE - {"butd.__main__"}
    assert packages <= set(table), f"packages missing from ARCHITECTURE.md's table: {packages - set(table)}"
    edges = _butd_edges()
    edges.pop("butd.__main__", None)  # `python -m butd` is the CLI
    assert outside_the_table(edges, table) == []


def test_the_table_check_fails_on_an_import_outside_it():
    table = allowed_imports(ARCHITECTURE.read_text(encoding="utf-8"))
    assert "butd.train" not in table["butd.extract"] and "butd.extract" not in table["butd.train"]
    wrong = {"butd.extract.runner": {"butd.train.loop", "butd.shards.writer"},
             "butd.models.sat": {"butd.datasets.vocab"}, "butd.config": {"butd.shards"},
             "butd.newpkg.x": {"butd.errors", "butd.shards"}}
    assert outside_the_table(wrong, table) == ["butd.config imports butd.shards",
                                               "butd.extract.runner imports butd.train.loop",
                                               "butd.models.sat imports butd.datasets.vocab",
                                               "butd.newpkg.x imports butd.shards"]
    assert outside_the_table({"butd.tasks.vqa": {"butd.train.vqa", "butd.extract.single"}}, table) == []


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
