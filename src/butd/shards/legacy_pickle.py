"""A restricted unpickler for the legacy files users ask us to read (npz `info`, h5 id index).

It resolves only the globals needed to rebuild numpy arrays, numpy scalars and plain containers;
any other global (os.system, builtins.eval, ...) raises UnsafePickleError before anything runs.
Callers use it only behind an explicit `--allow-pickle`.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

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
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to load global {module}.{name} from a pickle")


def restricted_loads(data: bytes) -> Any:
    """Unpickle `data` admitting only numpy arrays/scalars and plain containers."""
    return _Restricted(io.BytesIO(data), encoding="latin1").load()
