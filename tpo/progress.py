"""Progress in a log file. Lightning's progress bar draws for a terminal: with the output going to a file
(SLURM, ``nohup``) it writes one line per epoch, at the epoch's end. :class:`ProgressLog` prints plain
lines there instead."""

# No `from __future__ import annotations` here: jsonargparse reads the ranges of `tpo.settings`'
# types only from evaluated annotations.

import datetime
import math
import sys

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from tpo.settings import NonNegativeInt

TRAIN_METRICS = {"train/loss": ("loss", ".4f"), "rewards/accuracy": ("reward acc", ".3f")}
VAL_METRICS = {"val/loss": ("loss", ".4f"), "val/rewards/accuracy": ("reward acc", ".3f"),
               "val/rewards/margin": ("reward margin", ".4f")}
RATE = "perf/samples_per_s"  # pairs per second over all devices, from tpo.throughput.ThroughputLogger


def global_batch(trainer: L.Trainer) -> tuple[int, str]:
    """The preference pairs of one optimizer step, and how they are made up."""
    parts = (trainer.datamodule.hparams.batch_size, trainer.num_devices, trainer.num_nodes,
             trainer.accumulate_grad_batches)
    return math.prod(parts), "{} per device x {} device(s) x {} node(s) x {} accumulated batch(es)".format(*parts)


def _shown(values: dict, metrics: dict[str, tuple[str, str]]) -> str:
    return "".join(f"  {name} {float(values[key]):{fmt}}" for key, (name, fmt) in metrics.items() if key in values)


class _Window:
    """Sums over the batches since the last progress line."""

    def __init__(self):
        self.batches, self.sums, self.pairs, self.seconds = 0, {}, 0, 0.0

    def add(self, metrics: dict, pairs: int) -> None:
        self.batches += 1
        for key in TRAIN_METRICS.keys() & metrics.keys():
            self.sums[key] = self.sums.get(key, 0.0) + float(metrics[key])
        if metrics.get(RATE):
            self.pairs += pairs
            self.seconds += pairs / float(metrics[RATE])

    def means(self) -> dict[str, float]:
        return {key: total / self.batches for key, total in self.sums.items()}

    def rate(self) -> float | None:
        return self.pairs / self.seconds if self.seconds else None


class ProgressLog(L.Callback):
    """Progress lines while fitting, for a log file: on rank 0, and only when stdout is not a terminal (where
    the progress bar shows it). A line at the start (steps, global batch), one after each validation, and
    one every ``every_n_steps`` optimizer steps::

        step 50/408  epoch 2  loss 0.6812  reward acc 0.625  pairs/s 3.10  ETA 0:12:40

    with the means of loss and reward accuracy over the batches since the previous line, the pairs/s that
    ``ThroughputLogger`` measured over them (validation not counted), and the time the remaining steps
    take at that rate.

    Args:
        every_n_steps: optimizer steps between two progress lines (0: no progress lines).
    """

    def __init__(self, every_n_steps: NonNegativeInt = 50):
        self.every_n_steps = every_n_steps
        self._active = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active = (stage == TrainerFn.FITTING and trainer.is_global_zero and self.every_n_steps > 0
                        and not sys.stdout.isatty())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        # the fit loop has set its loader up by now: asking earlier would set it up before a sharded
        # checkpoint restores it (tpo.module.optimizer_steps)
        total = trainer.estimated_stepping_batches
        self._total = int(total) if math.isfinite(total) else None
        self._pairs_per_step, made_of = global_batch(trainer)
        self._printed_step, self._window = trainer.global_step, _Window()
        print(f"fit: step {trainer.global_step}/{self._total or '?'}, global batch {self._pairs_per_step} pairs "
              f"= {made_of}, a progress line every {self.every_n_steps} steps", flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._active:
            return
        self._window.add(trainer.callback_metrics, len(batch["ids"]) * trainer.world_size)
        step = trainer.global_step
        # an accumulated batch that did not step leaves global_step where it was
        if step == self._printed_step or (step % self.every_n_steps and step != self._total):
            return
        print(self._line(step, trainer.current_epoch), flush=True)
        self._printed_step, self._window = step, _Window()

    def _line(self, step: int, epoch: int) -> str:
        line = f"step {step}/{self._total or '?'}  epoch {epoch}" + _shown(self._window.means(), TRAIN_METRICS)
        rate = self._window.rate()
        if rate is not None:
            line += f"  pairs/s {rate:.2f}"
            if self._total is not None:
                eta = (self._total - step) * self._pairs_per_step / rate
                line += f"  ETA {datetime.timedelta(seconds=round(eta))}"
        return line

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active or trainer.sanity_checking:
            return
        # computed on every rank before this hook: reading them here syncs nothing
        print(f"validation at step {trainer.global_step}" + _shown(trainer.callback_metrics, VAL_METRICS), flush=True)
