"""Every registry, every entry: resolvable, documented, listed by the CLI and in ARCHITECTURE.md."""

import dataclasses
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from butd.cli import main
from butd.config import load_config
from butd.registry import REGISTRIES, resolve

ENTRIES = [(title, name) for title, ref in REGISTRIES.items() for name in resolve(ref).names()]
TASK_FUNCTIONS = ("train", "load_run", "evaluate", "predict", "report_items", "featurize")
ARCHITECTURE = Path(__file__).resolve().parents[1] / "ARCHITECTURE.md"


@pytest.mark.parametrize("title,name", ENTRIES, ids=[f"{t}:{n}" for t, n in ENTRIES])
def test_every_entry_resolves_and_is_documented(title, name):
    reg = resolve(REGISTRIES[title])
    entry = reg.entry(name)
    built = reg.builder(name)
    if title == "tasks":  # a task is a module with the task-layer functions
        assert all(callable(getattr(built, f)) for f in TASK_FUNCTIONS) and built.SPLIT
    elif title == "checkpoint layouts":  # a table of facts: the entry is the Layout itself
        assert built.name == name
    else:
        assert callable(built)
    assert entry.doc
    cls = reg.config_class(name)
    if cls is not None:
        assert dataclasses.is_dataclass(cls) and load_config(cls) == cls()
    listed = CliRunner().invoke(main, ["registries"]).output
    rows = {line[:23].strip(): line[23:].strip().split(", ") for line in listed.splitlines()}
    assert name in rows[title]
    assert f"| `{name}` | {entry.doc} |" in CliRunner().invoke(main, ["registries", "--markdown"]).output


@pytest.mark.skipif(os.environ.get("BUTD_TEST_DUMMIES") == "1", reason="the docs list the shipped entries")
def test_architecture_md_tables_are_generated_from_the_registries():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for title, ref in REGISTRIES.items():
        assert resolve(ref).markdown() in text, f"regenerate the {title} table: butd registries --markdown"
