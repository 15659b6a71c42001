"""A restricted unpickler for the legacy files users ask us to read (npz `info`, h5 id index).

It resolves only the globals needed to rebuild numpy arrays, numpy scalars and plain containers;
any other global (os.system, builtins.eval, ...) raises UnsafePickleError before anything runs.
Callers use it only behind an explicit `--allow-pickle`.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refusing to load global {module}.{name} from a pickle")
        if module.startswith("numpy") and module.endswith("multiarray"):
            # numpy 2 moved numpy.core to numpy._core; resolve either spelling without the shim's warning
            core = getattr(np, "_core", None) or np.core
            return getattr(core.multiarray, name)
        return super().find_class(module, name)


def restricted_loads(data: bytes) -> Any:
    """Unpickle `data` admitting only numpy arrays/scalars and plain containers."""
    return _Restricted(io.BytesIO(data), encoding="latin1").load()
