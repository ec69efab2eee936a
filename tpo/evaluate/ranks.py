"""Evaluation across processes: ``torchrun --nproc_per_node N -m tpo.evaluate mcq ...`` or ``srun``.

Each rank answers a disjoint share of the items (every N-th, in the benchmark's order) into its own
``predictions.rank<r>.jsonl``. When all ranks are done, rank 0 merges every prediction into
``predictions.jsonl`` (in the benchmark's order), deletes the rank files and writes the summary. A
rank counts as done every item answered in ``predictions.jsonl`` or in any rank file, so a killed
run resumes with any number of processes; items that errored are asked again.

The launcher is read as Lightning reads it (``TorchElasticEnvironment`` for torchrun,
``SLURMEnvironment`` for ``srun``); the ranks meet over a gloo process group, which needs no GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from tpo.errors import TPOError
from tpo.evaluate.mcq import is_answered, read_predictions, write_predictions


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        return items[self.rank::self.world]


def from_launcher() -> Ranks:
    """This process's place among the evaluation's processes (one process: rank 0 of 1).

    Inside a SLURM allocation, only processes that ``srun`` started (it sets
    ``SLURM_STEP_NUM_TASKS``) are ranks: a plain ``python`` in a batch script is one process.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        env = TorchElasticEnvironment()
    elif SLURMEnvironment.detect() and "SLURM_STEP_NUM_TASKS" in os.environ:
        try:
            env = SLURMEnvironment(auto_requeue=False)
        except RuntimeError as err:  # Lightning's check of the srun variables
            raise TPOError(f"SLURM: {err}") from None
    else:
        return Ranks()
    return Ranks(env.global_rank(), env.world_size(), env.local_rank())


def start(ranks: Ranks, device: str) -> str:
    """Join the process group; the device this rank evaluates on (``auto``: its own GPU, if any)."""
    if ranks.world == 1:
        return device
    if "MASTER_ADDR" not in os.environ:  # srun sets none of these; Lightning's SLURM reading does
        from lightning.fabric.plugins.environments import SLURMEnvironment

        slurm = SLURMEnvironment(auto_requeue=False)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = slurm.main_address, str(slurm.main_port)
    # answering a long benchmark share can take hours between the two meetings
    dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world, timeout=timedelta(hours=24))
    if device == "auto" and torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank % torch.cuda.device_count())
        return f"cuda:{torch.cuda.current_device()}"
    return device


def wait_for_all(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


def finish(ranks: Ranks) -> None:
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def rank_file(out: Path, ranks: Ranks) -> Path:
    """Where this rank writes (one process: ``predictions.jsonl`` itself)."""
    return out / ("predictions.jsonl" if ranks.world == 1 else f"predictions.rank{ranks.rank}.jsonl")


def all_done(out: Path) -> dict[str, dict]:
    """Every prediction written so far, by the merged file and by any rank of any earlier run. An
    answered item's row wins over its errors, which another rank of another run may have saved."""
    done = read_predictions(out / "predictions.jsonl")
    for path in sorted(out.glob("predictions.rank*.jsonl")):
        for item_id, row in read_predictions(path).items():
            if item_id not in done or not is_answered(done[item_id]):
                done[item_id] = row
    return done


def merge(out: Path, order: list[str]) -> Path:
    """Write every prediction into ``predictions.jsonl`` in ``order`` (ids not in it last), then
    remove the rank files. Rank 0 only, after :func:`wait_for_all`."""
    done = all_done(out)
    position = {item_id: i for i, item_id in enumerate(order)}
    rows = sorted(done.values(), key=lambda row: position.get(row["id"], len(position)))
    merged = out / "predictions.jsonl"
    write_predictions(merged, rows)
    for path in out.glob("predictions.rank*.jsonl"):
        path.unlink()
    return merged
