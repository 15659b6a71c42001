"""The house rules that keep the two stages apart and the files small (DESIGN.md §1-2)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "butd"
FORBIDDEN = {
    "extract": ("butd.train", "butd.models", "butd.evaluate"),
    "train": ("butd.extract",),
    "models": ("butd.extract", "butd.train"),
    "datasets": ("butd.extract", "butd.train"),
    "evaluate": ("butd.extract",),
    "shards": ("butd.extract", "butd.train", "butd.models", "butd.datasets", "butd.evaluate"),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_stages_meet_only_through_the_shard_contract(stage):
    bad = []
    for path in sorted((SRC / stage).rglob("*.py")):
        for name in _imports(path):
            if name.startswith(FORBIDDEN[stage]):
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "\n".join(bad)


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
