"""The process group: where this process stands (rank, world size, device), joining the group,
barriers and small messages, sharding, and starting local processes.

A leaf of ftlens (it imports only :mod:`ftlens.errors`): the executors that run a comparison's
plan across processes (:mod:`ftlens.invariance.parallel`), the experiment and the CLI use it.

The group only carries control messages (barrier, small objects), so it always uses the gloo
backend, on CPUs and GPUs alike. Its timeout is ``$FTLENS_DIST_TIMEOUT_S`` (default 24 h),
since a rank waits at the barrier for the slowest one.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.multiprocessing as mp

from ftlens.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "TIMEOUT_ENV",
    "Context",
    "assign",
    "barrier",
    "broadcast",
    "context",
    "gather",
    "init_process_group",
    "launch_local",
    "set_launcher_threads",
]

#: Environment variable: seconds a rank may wait at a barrier (default 24 h).
TIMEOUT_ENV = "FTLENS_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank, world size, the device it should use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return torch.device("cpu")

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (round robin, so costs balance across ranks)."""
        return list(items[self.rank :: self.world_size])

    def resolve_device(self, device: str | torch.device | None) -> torch.device | None:
        """``device`` for this rank: a bare ``"cuda"`` becomes ``cuda:<local_rank>``."""
        if device is None:
            return None
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return dev


def context() -> Context:
    """The context set by a launcher (accelerate, torchrun) or by :func:`launch_local`."""
    return Context(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 24 * 3600)))


def init_process_group(ctx: Context | None = None) -> Context:
    """Join the (gloo) process group if running distributed (idempotent); returns the context."""
    ctx = ctx or context()
    if ctx.distributed and not torch.distributed.is_initialized():
        if ctx.device.type == "cuda":
            torch.cuda.set_device(ctx.device)
        torch.distributed.init_process_group(backend="gloo", rank=ctx.rank, world_size=ctx.world_size,
                                             timeout=_timeout())
    return ctx


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def gather(obj: Any, ctx: Context) -> list[Any]:
    """Every rank's ``obj`` (a barrier too); ``[obj]`` when not distributed."""
    if not (ctx.distributed and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, ctx: Context) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (ctx.distributed and torch.distributed.is_initialized()):
        return obj
    box = [obj if ctx.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------------- sharding


def assign(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Indices of the items each rank runs, balanced by ``costs`` (longest first, to the least
    loaded rank; ties go to the lower rank). Deterministic, disjoint, and covering every item.

    With equal costs this is the round robin ``items[rank::world_size]``.
    """
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    order = sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i))
    load = [0.0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        r = min(range(world_size), key=lambda k: (load[k], k))
        shares[r].append(i)
        load[r] += float(costs[i])
    return [sorted(s) for s in shares]



def set_launcher_threads(threads: int | None) -> None:
    """Threads per rank under a launcher: ``threads``, else the launcher's ``OMP_NUM_THREADS``,
    else ``cpu_count // LOCAL_WORLD_SIZE``."""
    if threads:
        torch.set_num_threads(int(threads))
    elif "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))


# ----------------------------------------------------------------------------------- local launch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(local_rank: int, nprocs: int, port: int, threads: int, fn: Callable[..., Any], args: tuple,
            result_dir: str) -> None:
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(nprocs), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    ctx = init_process_group()
    try:
        result = fn(ctx, *args)
        if ctx.is_main:
            torch.save(result, os.path.join(result_dir, "result.pt"))
    except BaseException as exc:
        # keep the original exception (an FtlensError the CLI knows how to report) for the parent
        try:
            payload = pickle.dumps(exc)
        except Exception:
            payload = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
        with open(os.path.join(result_dir, f"error_{local_rank}.pkl"), "wb") as f:
            f.write(payload)
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch_local(fn: Callable[..., T], nprocs: int, *args: Any, threads: int | None = None) -> T:
    """Run ``fn(ctx, *args)`` in ``nprocs`` local processes; return rank 0's result.

    ``fn`` must be importable (a module-level function) and ``args`` picklable. CPU threads
    are divided between the processes (``threads`` each, default ``cpu_count // nprocs``) so
    that they don't oversubscribe the machine. An exception in a rank stops every rank and is
    re-raised here (the first rank's, with its original type).
    """
    if nprocs <= 1:
        return fn(Context(), *args)

    threads = int(threads) if threads else max(1, (os.cpu_count() or 1) // nprocs)
    with tempfile.TemporaryDirectory(prefix="ftlens-dist-") as result_dir:
        try:
            mp.spawn(_worker, args=(nprocs, _free_port(), threads, fn, args, result_dir), nprocs=nprocs, join=True)
        except Exception:
            # the first error written is the cause; later ones are other ranks losing their peer
            errors = sorted((os.path.join(result_dir, f) for f in os.listdir(result_dir) if f.startswith("error_")),
                            key=os.path.getmtime)
            if errors:
                with open(errors[0], "rb") as f:
                    original = pickle.loads(f.read())
                raise original from None
            raise
        return torch.load(os.path.join(result_dir, "result.pt"), weights_only=False)
