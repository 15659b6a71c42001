"""Tiny sizes for every registered caption model: each takes the keys its config dataclass has.

The registry-parametrised tests build ``build_caption_model(name, V, D, tiny(name))``, so a new model whose
config uses its own size names (``d_model`` ...) only needs its keys here once, not a special case per test.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from butd.models.registry import MODELS

TINY: dict[str, Any] = {
    "embed_dim": 16, "hidden_dim": 24, "att_dim": 12, "dropout": 0.0,  # the LSTM captioners
    "d_model": 16, "d_ff": 32, "heads": 2, "enc_layers": 2, "dec_layers": 2, "feat_dropout": 0.0,  # transformer
}


def tiny(name: str, **extra: Any) -> dict[str, Any]:
    """The TINY keys model ``name``'s config has, updated by ``extra``."""
    fields = {f.name for f in dataclasses.fields(MODELS.config_class(name))}
    return {**{k: v for k, v in TINY.items() if k in fields}, **extra}
