"""Items as columns (`ItemArrays`): what Postgres rows become (shared.index.load) and what a snapshot is built from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from shared.index.colours import as_quantized_colours

__all__ = ["ItemArrays"]


@dataclass(frozen=True)
class ItemArrays:
    """A batch of items as columns. Attributes are CSR: item i has attribute_ids[attr_offsets[i]:attr_offsets[i+1]].

    ids: int64 (n,); category_ids: int64 (n,); attr_offsets: int64 (n + 1,); attribute_ids: int64 (nnz,);
    codes: uint8 (n, n_bytes) C-contiguous; colours: uint8 (n, n_bins) quantised (`quantize_colours`).
    """

    ids: np.ndarray
    category_ids: np.ndarray
    attr_offsets: np.ndarray
    attribute_ids: np.ndarray
    codes: np.ndarray
    colours: np.ndarray

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        _check_array("ids", self.ids, np.int64, 1)
        _check_array("category_ids", self.category_ids, np.int64, 1)
        _check_array("attr_offsets", self.attr_offsets, np.int64, 1)
        _check_array("attribute_ids", self.attribute_ids, np.int64, 1)
        _check_array("codes", self.codes, np.uint8, 2)
        _check_array("colours", self.colours, np.uint8, 2)
        if self.category_ids.shape[0] != n or self.codes.shape[0] != n or self.colours.shape[0] != n:
            raise ValueError(
                f"ids, category_ids, codes and colours must have the same length, got {n}, "
                f"{self.category_ids.shape[0]}, {self.codes.shape[0]}, {self.colours.shape[0]}"
            )
        if self.attr_offsets.shape[0] != n + 1 or self.attr_offsets[0] != 0:
            raise ValueError(f"attr_offsets must have shape ({n + 1},) and start at 0, got {self.attr_offsets.shape}")
        if self.attr_offsets[-1] != self.attribute_ids.shape[0] or (n and (np.diff(self.attr_offsets) < 0).any()):
            raise ValueError("attr_offsets must be non-decreasing and end at len(attribute_ids)")
        if self.codes.shape[1] == 0 or not self.codes.flags.c_contiguous:
            raise ValueError(f"codes must be C-contiguous with n_bytes >= 1, got shape {self.codes.shape}")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_bytes(self) -> int:
        return int(self.codes.shape[1])

    @property
    def n_bins(self) -> int:
        return int(self.colours.shape[1])

    @classmethod
    def create(
        cls,
        ids: Sequence[int] | np.ndarray,
        category_ids: Sequence[int] | np.ndarray,
        attribute_ids: Sequence[Sequence[int]] | tuple[np.ndarray, np.ndarray],
        codes: np.ndarray,
        colours: np.ndarray,
    ) -> ItemArrays:
        """Normalise user-facing inputs: attribute_ids as one sequence per item or a CSR pair (offsets, values);
        colours as float32 histograms (quantised here) or uint8 already quantised."""
        ids_a = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        n = ids_a.shape[0]
        cats = np.ascontiguousarray(category_ids, dtype=np.int64).reshape(-1)
        if isinstance(attribute_ids, tuple) and len(attribute_ids) == 2 and isinstance(attribute_ids[0], np.ndarray):
            offsets = np.ascontiguousarray(attribute_ids[0], dtype=np.int64)
            values = np.ascontiguousarray(attribute_ids[1], dtype=np.int64)
        else:
            if len(attribute_ids) != n:
                raise ValueError(f"attribute_ids must have one sequence per item ({n}), got {len(attribute_ids)}")
            counts = np.fromiter((len(a) for a in attribute_ids), dtype=np.int64, count=n)
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            values = np.fromiter((x for a in attribute_ids for x in a), dtype=np.int64, count=int(offsets[-1]))
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
            raise TypeError(f"codes must be uint8, got {getattr(codes, 'dtype', type(codes).__name__)}")
        return cls(ids_a, cats, offsets, values, np.ascontiguousarray(codes), as_quantized_colours(colours, n))

    @classmethod
    def empty(cls, n_bytes: int, n_bins: int) -> ItemArrays:
        """No items, with the given widths."""
        return cls(
            np.empty(0, np.int64), np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64),
            np.empty((0, n_bytes), np.uint8), np.empty((0, n_bins), np.uint8),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[ItemArrays]) -> ItemArrays:
        """Items of all parts, in order (widths must agree)."""
        if not parts:
            raise ValueError("concatenate needs at least one ItemArrays")
        if len(parts) == 1:
            return parts[0]
        shifts = np.cumsum([0] + [p.attr_offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.attr_offsets[1:] + s for p, s in zip(parts, shifts)]).astype(np.int64)
        return cls(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.category_ids for p in parts]),
            offsets,
            np.concatenate([p.attribute_ids for p in parts]),
            np.ascontiguousarray(np.concatenate([p.codes for p in parts])),
            np.ascontiguousarray(np.concatenate([p.colours for p in parts])),
        )

    def take(self, index: np.ndarray) -> ItemArrays:
        """The items at positions `index` (int64 (m,)), in that order."""
        counts = np.diff(self.attr_offsets)[index]
        offsets = np.zeros(index.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # Gather every item's attribute slice at once: entry e of new item i comes from old start_i + (e - new start_i).
        src = np.repeat(self.attr_offsets[:-1][index] - offsets[:-1], counts) + np.arange(offsets[-1])
        return ItemArrays(
            self.ids[index], self.category_ids[index], offsets, self.attribute_ids[src],
            np.ascontiguousarray(self.codes[index]), np.ascontiguousarray(self.colours[index]),
        )


def _check_array(name: str, a: Any, dtype: type, ndim: int) -> None:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
