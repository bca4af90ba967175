"""Data-parallel training across processes (``torchrun --nproc_per_node N script.py ...``).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`init` then joins the process group
(NCCL on CUDA, gloo on CPU) and picks the device (``cuda:LOCAL_RANK`` on CUDA). Without those
variables, or with WORLD_SIZE 1, everything here is a no-op and the scripts run exactly as a
single process.

Conventions of the port (docs/performance.md "Multi-GPU"):

* ``train.batch_size`` is PER PROCESS; the global batch is ``world_size * batch_size``. Every
  rank draws the same permutation and takes its own slice of each global batch
  (``igam.data.TrainBatches(rank=, world_size=)``); the learning rate is not rescaled.
* Gradients are averaged by DistributedDataParallel (DDP): the update is the mean over ranks
  of each rank's gradient on its own batch. BatchNorm uses per-rank batch statistics (no
  SyncBatchNorm: it has no double backward, so IGAM cannot use it). Each rank updates its own
  running statistics (``broadcast_buffers=False``); rank 0's are saved and used to evaluate.
  Running statistics never influence training (train-mode BN uses batch statistics).
* Rank 0 alone writes files and logs; every rank computes, checkpoints are collective (each
  rank's RNG state is gathered so that a resumed run continues exactly).
* Each rank seeds its RNGs with :func:`rank_seed` (rank 0: the config's seed itself).
* SIGINT / SIGTERM (``igam.run.stopping``): torchrun passes the signal it gets on to every
  rank; the ranks agree on it after every training step (:func:`max_over_ranks`, one tiny
  all-reduce on the CPU), stop after the same step, write one checkpoint (rank 0) and exit
  with 128 + the signal number; rank 0 prints the torchrun command that continues the run.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from igam.errors import ConfigError, IGAMError
from igam.ops import unwrap
from igam.run.stopping import Stopped, announce

__all__ = ["DistInfo", "info", "init", "cleanup", "entry", "is_main", "rank_seed",
           "wrap", "on_main", "main_first", "all_gather_objects", "mean_scalars",
           "all_reduce_sum", "max_over_ranks", "broadcast_module"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()
_CPU_GROUP = None  # a gloo group for small CPU collectives when the default group is NCCL


def info() -> DistInfo:
    """The current process's :class:`DistInfo` (single process until :func:`init`)."""
    return _INFO


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"environment variable WORLD_SIZE={os.environ['WORLD_SIZE']!r} "
                          "is not an integer") from None


def init(device_name: str) -> tuple[DistInfo, torch.device]:
    """Resolve the config's ``device``; if launched with WORLD_SIZE > 1, join the process group.

    Returns (info, this rank's device). On CUDA each rank uses ``cuda:LOCAL_RANK`` with NCCL
    (an explicit ``cuda:N`` is refused: choose GPUs with CUDA_VISIBLE_DEVICES); on CPU the
    backend is gloo. Idempotent.
    """
    global _INFO, _CPU_GROUP
    from igam.run.device import resolve_device

    device = resolve_device(device_name)
    world = env_world_size()
    if world <= 1:
        return _INFO, device
    if _INFO.enabled:
        return _INFO, _INFO.device
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE > 1 but RANK/LOCAL_RANK are missing or not integers: "
                          "launch with torchrun --nproc_per_node N") from None
    if device.type == "cuda":
        if str(device_name).strip().startswith("cuda:"):
            raise ConfigError(f"device '{device_name}' under torchrun: each process uses "
                              "cuda:LOCAL_RANK; pass --device cuda and choose the GPUs with "
                              "CUDA_VISIBLE_DEVICES")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"device '{device}' does not support multi-process training; "
                          "use cuda or cpu")
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    _CPU_GROUP = dist.new_group(backend="gloo") if backend != "gloo" else None
    _INFO = DistInfo(rank, world, local_rank, device, backend)
    return _INFO, device


def cleanup(sync: bool = True) -> None:
    """Leave the process group (no-op if none); safe to call twice.

    ``sync``: wait at a barrier first, so that no rank tears down its gloo/NCCL connections
    while a peer still uses them (a rank that destroyed its group early was seen to abort
    with "terminate called without an active exception"). Pass False on an error path, where
    a peer may never reach the barrier.
    """
    global _INFO, _CPU_GROUP
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()
    _INFO, _CPU_GROUP = DistInfo(), None


def entry(main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a script's ``main(argv)`` so the process group is destroyed at the end, also
    on an error (use as ``run_main(distributed.entry(main))``). A one-line error
    (:class:`IGAMError`) is printed by rank 0 only; the other ranks exit with the same code 2
    silently. Likewise a stop on a signal (:class:`igam.run.stopping.Stopped`, raised by every
    rank after the same step): rank 0 prints the line with the command that continues the
    run, and every rank exits with 128 + the signal number."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None):
        try:
            result = main(argv)
        except Stopped as stop:
            if not _INFO.enabled:
                raise  # run_main prints the line
            main_rank = is_main()
            with contextlib.suppress(Exception):  # every rank stopped at the same point
                cleanup()
            if main_rank:
                announce(stop, argv, main)
            exit_now(stop.code)
        except IGAMError:
            cleanup(sync=False)
            if is_main():
                raise
            raise SystemExit(2) from None
        except BaseException:
            cleanup(sync=False)
            raise
        was_distributed = _INFO.enabled
        cleanup()
        if was_distributed:
            exit_now(0 if result is None else int(result))
        return result

    return wrapper


def exit_now(code: int = 0) -> None:
    """End a data-parallel process right after its group was destroyed: flush the standard
    streams and ``os._exit``, skipping interpreter finalisation. On CPU/gloo a rank was seen to
    abort there ("terminate called without an active exception", SIGABRT) after all its work
    was done and its files written, which turned a finished run into a failed one."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes files."""
    return _INFO.rank == 0


def rank_seed(seed: int, rank: int | None = None) -> int:
    """Seed of ``rank``'s RNGs: the config's seed on rank 0 (so one process is unchanged),
    distinct streams on the other ranks."""
    rank = _INFO.rank if rank is None else rank
    return int(seed) + 1_000_003 * int(rank)


def wrap(module: nn.Module, **kwargs) -> nn.Module:
    """``DistributedDataParallel(module)`` when running data parallel, else ``module`` itself.

    Only parameters with ``requires_grad`` are synchronised (freeze before wrapping). Buffers
    are not broadcast (see the module docstring); ``kwargs`` go to DDP.
    """
    if not _INFO.enabled:
        return module
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
        kwargs.setdefault("forward_sync_buffers", False)  # newer torch's name
    else:
        kwargs.setdefault("broadcast_buffers", False)
    ids = [_INFO.device.index] if _INFO.device is not None and _INFO.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, **kwargs)


def on_main(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank; if it raises, every
    rank raises the same exception (so a one-line error does not leave ranks waiting)."""
    if not _INFO.enabled:
        return fn(*args, **kwargs)
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except Exception as exc:  # re-raised below on every rank
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a decode cache), then the other ranks."""
    if _INFO.enabled and not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if _INFO.enabled and is_main():
            dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not _INFO.enabled:
        return [obj]
    out: list[Any] = [None] * _INFO.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sums over ranks of a few numbers (one collective); the numbers themselves alone."""
    if not _INFO.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_INFO.device)
    dist.all_reduce(t)
    return t.tolist()


def max_over_ranks(value: int) -> int:
    """The largest of every rank's ``value`` (an int; one collective on the CPU, also under
    NCCL); the value itself in a single process. The training loop calls it once per step to
    agree on a stop request (the signal number, 0 for none)."""
    if not _INFO.enabled:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CPU_GROUP)
    return int(t.item())


def mean_scalars(metrics: Mapping[str, float]) -> dict[str, float]:
    """Average logged scalars over ranks (every rank must call it with the same keys)."""
    if not _INFO.enabled:
        return dict(metrics)
    keys = list(metrics)
    sums = all_reduce_sum([metrics[k] for k in keys])
    return {k: s / _INFO.world_size for k, s in zip(keys, sums)}


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers (e.g. BatchNorm running statistics) to every
    rank, in place."""
    if not _INFO.enabled:
        return
    with torch.no_grad():
        for t in list(unwrap(module).parameters()) + list(unwrap(module).buffers()):
            dist.broadcast(t.data, src=0)
