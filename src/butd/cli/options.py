"""Option types shared by the commands: registry-backed choices and the device option."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from butd.registry import Registry, resolve

__all__ = ["RegistryChoice", "device_option", "pick_device"]


class RegistryChoice(click.Choice):
    """A choice whose values are read from a registry when the command runs (so new entries appear)."""

    def __init__(self, registry: Registry | str, where: Callable[[str], bool] | None = None) -> None:
        self._registry, self._where = registry, where
        super().__init__([])

    @property
    def registry(self) -> Registry:
        return resolve(self._registry)

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        return [n for n in self.registry.names() if self._where is None or self._where(n)]

    @choices.setter
    def choices(self, value: Any) -> None:  # click's __init__ assigns; the registry is the source
        pass


def device_option(fn: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True,
                        help="auto (a GPU when one is visible, else cpu), cpu or cuda.")(fn)


def pick_device(name: str) -> str:
    """Resolve ``--device`` and say once which device runs."""
    from butd.devices import resolve_device

    device = resolve_device(name)
    if os.environ.get("RANK", "0") == "0":  # once per job, not once per DDP rank
        click.echo(f"device: {device}", err=True)
    return device
