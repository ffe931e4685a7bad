"""Data-parallel runs: launching ranks through torch's elastic launcher (``torchrun``), setting up their process
group, and the few collectives the pipeline needs so that rank 0 alone writes.

Every rank runs the training stages (teacher fine-tuning and every student) through ``transformers.Trainer``, which
shards the data and all-reduces gradients (DDP: gloo on CPU, NCCL on GPU). Only rank 0 evaluates the trained model,
writes the run directory and prints; the other ranks ("followers") wait at a barrier at the end of each stage and
exit once the last training stage is done, leaving export, benchmark and report to rank 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np

from distill.errors import ConfigError, DistillError

T = TypeVar("T")

TIMEOUT = timedelta(hours=6)
"""How long a rank waits at a collective for the others: long enough for rank 0 to evaluate and save a model, or to
build an augmented training set, while the followers wait."""


def _torch_distributed() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """Number of ranks training together now (1 outside a data-parallel run, and after :func:`leave`)."""
    dist = _torch_distributed()
    return dist.get_world_size() if dist else 1


def rank() -> int:
    """This process's rank (0 outside a data-parallel run)."""
    dist = _torch_distributed()
    return dist.get_rank() if dist else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the run directory (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a one-process run)."""
    dist = _torch_distributed()
    if dist and dist.get_world_size() > 1:
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank, so that all ranks take the same decision about what is on disk."""
    dist = _torch_distributed()
    if not dist or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 alone (it writes the run directory), then give its result to every rank.

    The one way a domain module hands a write to rank 0: the others wait here and receive rank 0's return value
    (a record, a path), so every rank carries on with the same value and none needs to ask which rank it is. An
    exception on rank 0 propagates there; the other ranks then fail at their next collective.
    """
    if world_size() == 1:
        return work()
    result = work() if is_main() else None
    return broadcast(result)


def gather_rows(part: np.ndarray) -> np.ndarray:
    """Concatenate every rank's ``part`` in rank order, on every rank: ``(rows of this rank, ...)`` to
    ``(rows of all ranks, ...)``."""
    dist = _torch_distributed()
    if not dist or dist.get_world_size() == 1:
        return part
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return np.concatenate(parts, axis=0)


def shard_bounds(rows: int) -> tuple[int, int]:
    """The contiguous ``[start, end)`` slice of ``rows`` that this rank computes when work is split across ranks."""
    size, index = world_size(), rank()
    bounds = np.linspace(0, rows, size + 1).round().astype(int)
    return int(bounds[index]), int(bounds[index + 1])


def sharded(rows: int, compute: Callable[[int, int, bool], np.ndarray]) -> np.ndarray:
    """Split ``rows`` into contiguous shares, one per rank; each rank runs ``compute(start, end, show_progress)``
    on its share (only rank 0 shows progress) and every rank gets all the results, in order."""
    start, end = shard_bounds(rows)
    return gather_rows(compute(start, end, is_main()))


def leave() -> None:
    """End the data-parallel part of a run, on every rank: after this, rank 0 carries on alone and collectives
    are no-ops. Does nothing outside a data-parallel run."""
    dist = _torch_distributed()
    if dist:
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (and fills a cache); the other ranks run it after, finding the cache filled."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another rank of this run died (its own message, on
    its own standard error, says why; this rank's traceback would only bury it)."""
    text = str(error)
    return (
        int(os.environ.get("WORLD_SIZE", "1")) > 1
        and isinstance(error, RuntimeError)
        and any(
            sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "remote process exited")
        )
    )


def _die_with_launcher() -> None:
    """Ask Linux to kill this rank when its launcher dies: torch starts ranks in sessions of their own, so a
    SIGKILL of ``distill run --processes N`` would otherwise leave them training, and writing, in the background."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def init_from_environment() -> None:
    """Join the process group when started as one rank of several (``WORLD_SIZE`` > 1, as torchrun sets it).

    Followers' standard output is silenced so that messages and summaries are printed once, by rank 0; errors
    still reach standard error.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _torch_distributed():
        return
    import torch
    import torch.distributed as dist

    _die_with_launcher()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def local_device():
    """This rank's accelerator (``cuda:LOCAL_RANK``) when there is one, else the CPU: where the teacher runs when it
    labels data outside the Trainer (augmentation filtering, the teacher-logit cache)."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def check_batch_sizes(batch_sizes: dict[str, int], processes: int) -> None:
    """Refuse a global batch size that does not split evenly across ``processes`` (``{dotted path: size}``)."""
    uneven = [f"{path} is {size}" for path, size in batch_sizes.items() if size % processes]
    if uneven:
        raise ConfigError(
            f"with {processes} processes each global batch is split evenly across them, but "
            + ", ".join(uneven)
            + f"; use batch sizes that are multiples of {processes}, or another --processes"
        )


@dataclass(frozen=True)
class Nodes:
    """The machines of a data-parallel run: how many, which one this is, and where they meet.

    Node 0 runs global rank 0, which writes the run directory; the ranks of node ``k`` are
    ``k * processes ... (k + 1) * processes - 1`` (torchrun's static rendezvous).
    """

    count: int = 1
    rank: int = 0
    endpoint: str | None = None

    def check(self) -> None:
        if self.count > 1 and not self.endpoint:
            raise ConfigError(
                f"--nnodes {self.count} needs --rdzv-endpoint HOST:PORT, an address of node 0 every node can reach"
            )
        if not 0 <= self.rank < self.count:
            raise ConfigError(
                f"--node-rank {self.rank} is not one of the {self.count} nodes; use 0 to {self.count - 1}"
            )


ONE = Nodes()
"""One machine: the default."""


def launch(arguments: list[str], processes: int, nodes: Nodes = ONE) -> None:
    """Run ``python ARGUMENTS`` as ``processes`` ranks on this machine and wait: alone (torchrun's standalone mode),
    or as one of ``nodes.count`` machines meeting at ``nodes.endpoint`` (torchrun's static rendezvous).

    Each rank gets an equal share of the CPU cores as its thread count unless ``OMP_NUM_THREADS`` is set. When any
    rank fails, the launcher stops the others and this raises one :class:`DistillError` naming the failed rank.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.ERROR)
    meeting = (
        {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0", "run_id": str(uuid.uuid4())}
        if nodes.count == 1
        else {  # every node must name the same run
            "rdzv_backend": "static",
            "rdzv_endpoint": nodes.endpoint,
            "rdzv_configs": {"rank": nodes.rank},
            "run_id": f"distill-{nodes.endpoint}",
        }
    )
    config = LaunchConfig(
        min_nodes=nodes.count,
        max_nodes=nodes.count,
        nproc_per_node=processes,
        max_restarts=0,
        monitor_interval=1,
        **meeting,
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)(*arguments)
    except ChildFailedError as err:
        failed_rank, failure = err.get_first_failure()
        raise DistillError(
            f"process {failed_rank} of {processes * nodes.count} failed (exit code {failure.exitcode}) and the others "
            "were stopped; its message is above. Rerun the same command to resume from the last checkpoint"
        ) from err
