"""Primary-key lookup over one immutable column of keys (int64 or string)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["KeyIndex", "keys_to_numpy"]


def keys_to_numpy(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Keys as a NumPy array: int64, or object (Python str) for string keys."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if pa.types.is_integer(keys.type):
        return np.asarray(keys.to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.asarray(keys.to_pylist(), dtype=object)


class KeyIndex:
    """Finds the row positions of keys in an immutable, duplicate-free key column.

    Integer keys use a sorted copy and binary search; string keys a dict.
    """

    def __init__(self, keys: pa.Array | pa.ChunkedArray) -> None:
        values = keys_to_numpy(keys)
        self._numeric = values.dtype != object
        if self._numeric:
            self._order = np.argsort(values, kind="stable")
            self._sorted = values[self._order]
        else:
            self._positions = {key: pos for pos, key in enumerate(values.tolist())}

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For ``keys``: (indices into ``keys`` that were found, their row positions)."""
        if len(keys) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self._numeric:
            if keys.dtype == object or self._sorted.size == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.int64)
            slot = np.searchsorted(self._sorted, keys)
            slot_clipped = np.minimum(slot, self._sorted.size - 1)
            found = np.flatnonzero(self._sorted[slot_clipped] == keys)
            return found, self._order[slot_clipped[found]]
        found, positions = [], []
        for i, key in enumerate(keys.tolist()):
            pos = self._positions.get(key)
            if pos is not None:
                found.append(i)
                positions.append(pos)
        return np.asarray(found, np.int64), np.asarray(positions, np.int64)
