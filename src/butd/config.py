"""``load_config``: defaults of a frozen (nested) config dataclass, then a YAML file, then overrides.

The one place configs are merged. YAML and JSON give lists and dicts; frozen dataclasses hold tuples and
nested dataclasses, so lists become tuples and dicts of a nested dataclass field merge into its default
(key by key). Unknown keys stop with a :class:`~butd.errors.UserError` naming the known ones.
``load_config(Cls, None, asdict(cfg)) == cfg`` for every config in butd (tests check this).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from butd.errors import UserError

__all__ = ["load_config", "merge_config", "read_yaml", "to_plain"]

T = TypeVar("T")


def _plain_value(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_plain_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def merge_config(cfg: T, overrides: dict[str, Any] | None, where: str = "config") -> T:
    """A copy of frozen dataclass ``cfg`` with (nested) ``overrides`` applied."""
    if not overrides:
        return cfg
    if not isinstance(overrides, dict):
        raise UserError(f"expected a mapping of {type(cfg).__name__} fields", where,
                        "write the settings as `key: value` lines", usage=True)
    fields = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields:
            raise UserError(f"unknown {type(cfg).__name__} key {key!r}", where,
                            f"known keys: {', '.join(sorted(fields))}", usage=True)
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge_config(current, value, where)
        else:
            changes[key] = _plain_value(value)
    try:
        return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad {type(cfg).__name__} settings: {exc}", where, "fix the value", usage=True) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError("cannot read the config", path, f"fix the file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError("expected a mapping at the top level", path, "write the settings as `key: value` lines",
                        usage=True)
    return data


def load_config(cls: type[T], yaml_path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> T:
    """``cls()`` updated by the YAML file's keys, then by ``overrides`` (nested dicts)."""
    cfg = cls()
    if yaml_path is not None:
        cfg = merge_config(cfg, read_yaml(yaml_path), str(yaml_path))
    return merge_config(cfg, overrides, "overrides")


def to_plain(cfg: Any) -> dict[str, Any]:
    """A config as JSON/YAML-safe plain data (tuples as lists)."""
    import json

    return json.loads(json.dumps(dataclasses.asdict(cfg)))
