"""Multi-process helpers on PyTorch's own distributed engine (torchrun env vars, NCCL on GPU, gloo on CPU).

Every helper is a no-op in a single process, so the same code runs with and without ``torchrun``.
"""
from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError

COLLECTIVE_TIMEOUT_MIN = 60  # how long a process waits in a barrier / collective before the job fails


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: ``rank`` of ``world_size``, GPU index ``local_rank`` on its machine,
    which runs ``local_world_size`` processes of the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and logs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def _local_gpu(spec: str, local_rank: int) -> int:
    """The CUDA device of the process with ``local_rank`` on its machine: ``cuda:LOCAL_RANK`` when it sees every GPU
    of the machine, ``cuda:0`` when the launcher gave it one of its own (SLURM ``--gpus-per-task``, Kubernetes)."""
    count = torch.cuda.device_count()
    if local_rank < count:
        return local_rank
    if count == 1:
        return 0
    raise ConfigError(f"runtime.device={spec}: LOCAL_RANK={local_rank}, but this process sees {count} CUDA devices: "
                      f"start at most {count} processes on this machine, or give each process its own GPU "
                      f"(CUDA_VISIBLE_DEVICES)")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; 'auto' and 'cuda' pick this process's GPU (``_local_gpu``)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device(f"cuda:{_local_gpu(spec, local_rank)}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"runtime.device={spec}: CUDA is not available on this machine (use cpu or auto)")
        if spec == "cuda":
            return torch.device(f"cuda:{_local_gpu(spec, local_rank)}")
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"runtime.device={spec}: expected cuda:N with an integer N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError(f"runtime.device={spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device(f"cuda:{index}")
    raise ConfigError(f"runtime.device={spec}: expected auto, cpu, cuda or cuda:N")


def select_device(spec: str, local_rank: int = 0) -> torch.device:
    """``resolve_device``, made this process's current CUDA device when it is one (so that pinned-memory threads,
    NCCL and the caching allocator open their context there, not on GPU 0)."""
    device = resolve_device(spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_distributed(device_str: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's RANK/WORLD_SIZE/LOCAL_RANK (world size 1 without them)."""
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        return DistInfo(dist.get_rank(), world, _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", world))
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        return DistInfo(0, 1, local_rank, 1)
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    device = select_device(device_str, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # rank 0 alone scores and reports between stages while the others wait in a collective: allow it an hour
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=COLLECTIVE_TIMEOUT_MIN))
    return DistInfo(rank, world_size, local_rank, _env_int("LOCAL_WORLD_SIZE", world_size))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def threads_per_process(requested: int, local_world_size: int = 1, cores: int | None = None) -> int:
    """Torch intra-op threads for one process: ``requested`` if > 0, else the machine's cores shared
    evenly by the ``local_world_size`` processes of the job on it (at least 1); 0 alone keeps torch's default."""
    if requested > 0:
        return int(requested)
    if local_world_size <= 1:
        return 0
    return max(1, (cores or available_cores()) // int(local_world_size))


def is_initialized() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_initialized():
        dist.barrier()


def shard(items, rank: int, world: int) -> list:
    """Items rank, rank+world, rank+2*world, ...: disjoint across ranks, together covering ``items`` in order."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    return list(items)[rank::world]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a tensor (any shape) over all processes, in place; returns it."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_object(obj, src: int = 0):
    """Every process gets rank ``src``'s picklable ``obj``."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every process gets the list of all processes' picklable ``obj``, in rank order (``[obj]`` alone)."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if is_initialized():
        dist.destroy_process_group()


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed determined by ``seed`` and ``keys`` (e.g. rank, or epoch and index)."""
    return int(np.random.SeedSequence([int(seed), *[int(k) for k in keys]]).generate_state(1)[0])


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python ``random``, numpy and torch; each rank gets its own deterministic seed, which is returned."""
    s = int(seed) if rank == 0 else derive_seed(seed, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s
