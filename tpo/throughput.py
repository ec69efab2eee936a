"""What a person watching a run looks at first: throughput and peak memory, logged every step."""

from __future__ import annotations

import resource
import time

import lightning as L
import torch


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory since the last reset: allocated device memory on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class ThroughputLogger(L.Callback):
    """Logs ``perf/samples_per_s`` (preference pairs) and ``perf/tokens_per_s`` (non-padding tokens
    of the batch's rows, packed ``[prompt][chosen][rejected]`` or two per pair: the tokens the model runs), over all devices, measured from one step's end to the next's
    so that data loading counts; and ``perf/peak_memory_gib``, the step's peak on the fullest rank."""

    def __init__(self):
        self._last: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last is None:
            self._last = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        n = len(batch["ids"])
        pl_module.log("perf/peak_memory_gib", peak_memory_gib(pl_module.device), batch_size=n, reduce_fx="max",
                      sync_dist=True)
        if elapsed <= 0:
            return
        pairs = n * trainer.world_size
        tokens = int(batch["inputs"]["attention_mask"].sum()) * trainer.world_size
        pl_module.log_dict({"perf/samples_per_s": pairs / elapsed, "perf/tokens_per_s": tokens / elapsed},
                           batch_size=n)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._last = None  # do not count validation and checkpointing as training time
