"""Training throughput in pairs (samples) and tokens per second, logged every step."""

from __future__ import annotations

import time

import lightning as L


class ThroughputLogger(L.Callback):
    """Logs ``perf/samples_per_s`` (preference pairs) and ``perf/tokens_per_s`` (non-padding tokens
    of the chosen and rejected rows), over all devices, measured from one step's end to the next's
    so that data loading counts."""

    def __init__(self):
        self._last: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        if elapsed <= 0:
            return
        pairs = len(batch["ids"]) * trainer.world_size
        tokens = int(batch["inputs"]["attention_mask"].sum()) * trainer.world_size
        pl_module.log_dict({"perf/samples_per_s": pairs / elapsed, "perf/tokens_per_s": tokens / elapsed},
                           batch_size=len(batch["ids"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._last = None  # do not count validation and checkpointing as training time
