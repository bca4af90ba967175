"""Batches for training (infinite, shuffled, augmented) and evaluation (one ordered pass).

Training [fix]: a fresh random permutation for each pass over the data; when fewer than a full
(global) batch remain, the rest of the pass is dropped, the data reshuffled and a new pass
started, so every batch is full and no sample repeats within a pass. (The original's
``get_next_batch(multiple_passes=True)`` wrapped around and could repeat samples.)

Evaluation [fix]: every example exactly once, in order, with a partial last batch (the original
dropped the remainder yet divided by N).

The dataset is moved to the device once, as uint8 NCHW (4x smaller than float32); each batch
is gathered, converted to float32 in [0, 255] and augmented on the device.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from igam.data.augment import augment_batch
from igam.data.datasets import ArrayDataset
from igam.errors import CheckpointError, ConfigError

Device = Union[str, torch.device]
_MASK64 = (1 << 64) - 1


def _mix_seed(*values: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64 chain); independent streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def to_tensor_images(images: np.ndarray, device: Device) -> torch.Tensor:
    """uint8 (N, H, W, 3) NHWC numpy -> float32 (N, 3, H, W) in [0, 255] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return t.permute(0, 3, 1, 2).float().contiguous()


class TrainBatches:
    """Infinite iterator of training batches ``(x, y)``.

    ``x``: float32 (B, 3, H, W) in [0, 255] on ``device`` (augmented if ``augment``);
    ``y``: int64 (B,) on ``device``. B = ``batch_size`` (per rank), always full.

    Data parallel: with ``world_size`` > 1 every rank draws the same permutation (the order
    stream depends only on ``seed``) and takes slice ``rank`` of each global batch of
    ``batch_size * world_size`` samples, so ranks see disjoint samples. Augmentation randomness
    is keyed by (seed, rank, batch counter), so it differs across ranks and resumes exactly.

    ``state_dict()`` / ``load_state_dict()`` capture the permutation, position, pass and batch
    counters and the order generator's state: a restored iterator continues with exactly the
    batches the original would have produced.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        device: Device,
        seed: int = 0,
        augment: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"invalid rank {rank} for world_size {world_size}")
        n = len(dataset)
        if n < batch_size * world_size:
            raise ConfigError(
                f"{dataset.name}: batch size {batch_size} x {world_size} rank(s) exceeds the "
                f"{n} training examples"
            )
        self.dataset_name = dataset.name
        self.n = n
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.device = torch.device(device)
        # Moved once: uint8 NCHW (converted to float per batch).
        self.images = (
            torch.from_numpy(np.ascontiguousarray(dataset.images))
            .to(self.device)
            .permute(0, 3, 1, 2)
            .contiguous()
        )
        self.labels = torch.from_numpy(dataset.labels.astype(np.int64)).to(self.device)
        self._order_gen = torch.Generator(device="cpu")
        self._order_gen.manual_seed(_mix_seed(self.seed, 0x0DE5))
        self._aug_gen = torch.Generator(device=self.device)
        self._perm: Optional[torch.Tensor] = None
        self._pos = 0  # start of the next global batch within the current permutation
        self._passes = 0  # permutations drawn so far
        self._batches = 0  # batches yielded so far

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_pass(self) -> int:
        """Full global batches per pass; the remainder of each permutation is skipped."""
        return self.n // self.global_batch_size

    @property
    def passes(self) -> int:
        """Number of passes (permutations) started so far."""
        return self._passes

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self

    def next_indices(self) -> torch.Tensor:
        """Advance by one batch; the dataset indices (int64 (B,), CPU) of this rank's slice."""
        g = self.global_batch_size
        if self._perm is None or self._pos + g > self.n:
            self._perm = torch.randperm(self.n, generator=self._order_gen)
            self._pos = 0
            self._passes += 1
        start = self._pos + self.rank * self.batch_size
        idx = self._perm[start : start + self.batch_size]
        self._pos += g
        self._batches += 1
        return idx

    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = self.next_indices().to(self.device)
        x = self.images.index_select(0, idx).float()
        if self.augment:
            self._aug_gen.manual_seed(_mix_seed(self.seed, 0xA06, self.rank, self._batches))
            x = augment_batch(x, generator=self._aug_gen)
        y = self.labels.index_select(0, idx)
        return x, y

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly where this iterator is (CPU tensors/ints)."""
        return {
            "n": self.n,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "perm": None if self._perm is None else self._perm.clone(),
            "pos": self._pos,
            "passes": self._passes,
            "batches": self._batches,
            "order_gen_state": self._order_gen.get_state(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a ``state_dict()`` (from this or any rank of the same run)."""
        try:
            for key in ("n", "batch_size", "world_size"):
                if int(state[key]) != getattr(self, key):
                    raise CheckpointError(
                        f"batch sampler state has {key}={state[key]}, but this run has "
                        f"{key}={getattr(self, key)}"
                    )
            perm = state["perm"]
            if perm is not None:
                perm = torch.as_tensor(perm, dtype=torch.int64).cpu()
                if perm.shape != (self.n,):
                    raise CheckpointError(
                        f"batch sampler state has a permutation of shape {tuple(perm.shape)}, "
                        f"expected ({self.n},)"
                    )
            self._order_gen.set_state(torch.as_tensor(state["order_gen_state"]).cpu())
            self.seed = int(state["seed"])
            self._perm = perm
            self._pos = int(state["pos"])
            self._passes = int(state["passes"])
            self._batches = int(state["batches"])
        except KeyError as exc:
            raise CheckpointError(f"batch sampler state lacks key {exc}") from None


def eval_batches(
    dataset: ArrayDataset, batch_size: int, device: Device
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Every example once, in order: float32 (b, 3, H, W) in [0, 255] and int64 (b,) on
    ``device``; the last batch is partial if ``batch_size`` does not divide N. [fix]"""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(dataset), batch_size):
        end = min(start + batch_size, len(dataset))
        x = to_tensor_images(dataset.images[start:end], device)
        y = torch.from_numpy(dataset.labels[start:end].astype(np.int64)).to(device)
        yield x, y
