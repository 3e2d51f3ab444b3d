"""Re-ranking vector: a compact second look at the shortlist that the binary codes find (issue 12).

The 256-bit code ranks the whole index in the daemon's RAM. Binarising loses detail, so the daemon's first
`RERANK_DEPTH` results are re-ordered by the cosine between the query's projection of its pooled descriptor (float)
and each listing's quantised copy of the same projection. The copy (64 bytes as shipped) is stored per listing in
Postgres (`postings.rerank`) and read only for the shortlist, so the daemon's RAM per item does not change.

Projection: whitened PCA of the TRAIN split's descriptors (`training/retrieval/rerank.py` fits it: every dimension
has unit variance on TRAIN, so the cosine weighs rare directions as much as common ones); then a `bits`-bit
mid-rise quantiser with one step per dimension, packed MSB-first (the first dimension in the high bits of byte 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["RERANK_FILE", "RERANK_DEPTH", "Reranker", "cosine_to"]

RERANK_FILE = "rerank.safetensors"
RERANK_DEPTH = 100  # shortlist size re-ordered per search (chosen on VAL with the fit)


@dataclass(frozen=True)
class Reranker:
    """mean: float32 (D,); components: float32 (D, d) (whitening folded in); step: float32 (d,) quantisation step
    per dimension; bits: 1, 2, 4 or 8 per dimension (value q stands for (q + 0.5 - 2^(bits-1)) * step)."""

    mean: np.ndarray
    components: np.ndarray
    step: np.ndarray
    bits: int = 2

    def __post_init__(self) -> None:
        d = self.components.shape[1]
        if self.bits not in (1, 2, 4, 8):
            raise ValueError(f"bits must be 1, 2, 4 or 8, got {self.bits}")
        if self.mean.shape != (self.components.shape[0],) or self.step.shape != (d,) or (d * self.bits) % 8:
            raise ValueError(f"rerank shapes do not agree: mean {self.mean.shape}, components "
                             f"{self.components.shape}, step {self.step.shape} (d x bits must fill whole bytes)")

    @property
    def dims(self) -> int:
        return int(self.components.shape[1])

    @property
    def n_bytes(self) -> int:
        return self.dims * self.bits // 8

    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """float32 (n, D) pooled descriptors -> float32 (n, d): what a query compares with."""
        return np.ascontiguousarray((descriptors - self.mean[None, :]) @ self.components, dtype=np.float32)

    def pack(self, vectors: np.ndarray) -> np.ndarray:
        """float32 (n, d) projections -> uint8 (n, d * bits / 8): the stored copy."""
        half = 1 << (self.bits - 1)
        q = np.clip(np.floor(vectors / self.step[None, :]) + half, 0, 2 * half - 1).astype(np.uint8)
        # Each level as `bits` bits, MSB first, then all bits of a row packed into bytes.
        shifts = np.arange(self.bits - 1, -1, -1, dtype=np.uint8)
        bit_planes = (q[:, :, None] >> shifts[None, None, :]) & 1
        return np.ascontiguousarray(np.packbits(bit_planes.reshape(q.shape[0], -1), axis=1))

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """uint8 (n, d * bits / 8) -> float32 (n, d): the values the stored copy stands for."""
        if packed.ndim != 2 or packed.shape[1] != self.n_bytes:
            raise ValueError(f"packed re-rank vectors must be (n, {self.n_bytes}), got {packed.shape}")
        bit_planes = np.unpackbits(packed, axis=1).reshape(packed.shape[0], self.dims, self.bits)
        weights = (1 << np.arange(self.bits - 1, -1, -1)).astype(np.float32)
        q = bit_planes.astype(np.float32) @ weights
        return (q + 0.5 - (1 << (self.bits - 1))) * self.step[None, :]

    def stored_copy(self, descriptors: np.ndarray) -> np.ndarray:
        """float32 (n, D) -> float32 (n, d): what a listing's stored vector stands for (projected, packed, unpacked),
        for evaluations that score whole matrices without Postgres."""
        return self.unpack(self.pack(self.project(descriptors)))

    @classmethod
    def load(cls, folder: str | Path) -> Reranker | None:
        """The re-ranker shipped beside a features configuration, or None when it has none."""
        path = Path(folder) / RERANK_FILE
        if not path.exists():
            return None
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return cls(mean=t["mean"].astype(np.float32), components=t["components"].astype(np.float32),
                   step=t["step"].astype(np.float32), bits=int(t["bits"][0]))

    def save(self, folder: str | Path) -> Path:
        """fp16 safetensors, as every shipped checkpoint; `load` of the file is what serving uses."""
        from safetensors.numpy import save_file

        path = Path(folder) / RERANK_FILE
        save_file({"mean": self.mean.astype(np.float16), "components": self.components.astype(np.float16),
                   "step": self.step.astype(np.float16), "bits": np.array([self.bits], np.int32)}, str(path))
        return path


def cosine_to(query: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Cosine of one query vector (d,) with each row of items (n, d): float64 (n,)."""
    q = query.astype(np.float64)
    x = items.astype(np.float64)
    den = np.maximum(np.linalg.norm(x, axis=1) * max(float(np.linalg.norm(q)), 1e-12), 1e-12)
    return (x @ q) / den
