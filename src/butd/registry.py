"""The one registry style: a static table name -> ``Entry(config class, builder)``, resolved lazily.

Every registry in butd (models, extractors, image sources, import formats, decoders, LR schedules,
SCST baselines) is a :class:`Registry` over a plain dict literal in the module that owns that kind of
thing. Entries name their config dataclass and builder as ``"module:attr"`` strings, so listing names
(CLI choices, docs, parametrised tests) imports nothing heavy; :meth:`Registry.builder` imports on use.
Adding a component is one file plus one line in the table.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from butd.errors import UserError

__all__ = ["REGISTRIES", "Entry", "Registry", "resolve"]


def resolve(ref: Any) -> Any:
    """``"module:attr"`` -> the attribute (imported now); anything else is returned as is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Entry:
    """One registered component: its config dataclass, its builder, and a few facts (e.g. its task)."""

    config: Any  # "module:Class" or the class; None when the component takes no config
    builder: Any  # "module:callable" or the callable
    doc: str = ""  # one line for listings and docs
    info: dict[str, Any] = field(default_factory=dict)  # registry-specific facts ("task", "suffixes", ...)


class Registry:
    """A named table of :class:`Entry`; ``table`` is the single source of the names."""

    def __init__(self, kind: str, table: dict[str, Entry]) -> None:
        self.kind, self.table = kind, table

    def names(self) -> list[str]:
        return sorted(self.table)

    def __contains__(self, name: object) -> bool:
        return name in self.table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> Any:
        """The builder of ``name`` (so ``REGISTRY[name](...)`` calls it)."""
        return self.builder(name)

    def entry(self, name: str) -> Entry:
        if name not in self.table:
            raise UserError(f"unknown {self.kind} {name!r}", name, f"choose one of {', '.join(self.names())}",
                            usage=True)
        return self.table[name]

    def config_class(self, name: str) -> Any:
        return resolve(self.entry(name).config)

    def builder(self, name: str) -> Any:
        return resolve(self.entry(name).builder)

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.builder(name)(*args, **kwargs)

    def markdown(self) -> str:
        """A Markdown table of the entries (the docs are generated from this, never typed by hand)."""
        rows = [f"| `{n}` | {self.table[n].doc} |" for n in self.names()]
        return "\n".join([f"| {self.kind} | what |", "|---|---|", *rows])


# Every registry of the project ("module:attr", imported on use): the CLI choices, `butd registries`,
# ARCHITECTURE.md's generated tables and the parametrised tests read this list.
REGISTRIES = {
    "models": "butd.models.registry:MODELS",
    "extractors": "butd.extract.registry:EXTRACTORS",
    "sources": "butd.extract.sources:SOURCES",
    "boxes policies": "butd.extract.selection:POLICIES",
    "preprocessing layouts": "butd.extract.preprocess:PREPROCESSORS",
    "checkpoint layouts": "butd.extract.bua_heads:LAYOUTS",
    "import formats": "butd.shards.importers:IMPORT_FORMATS",
    "decoders": "butd.models.decoding:DECODERS",
    "schedules": "butd.train.schedules:SCHEDULES",
    "scst baselines": "butd.train.scst:SCST_BASELINES",
    "optimizers": "butd.train.vqa:OPTIMIZERS",
    "vqa evaluator versions": "butd.evaluate.vqa_accuracy:VERSIONS",
    "tasks": "butd.tasks:TASKS",
}
