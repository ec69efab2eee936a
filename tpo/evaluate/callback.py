"""Evaluation inside training: a small multiple-choice (or NIAH) set every N steps, to TensorBoard."""

from __future__ import annotations

from typing import Literal

import lightning as L

from tpo.data.frames import NUM_FRAMES
from tpo.errors import ConfigError, TPOError
from tpo.evaluate.benchmarks import load_benchmark
from tpo.evaluate.mcq import evaluate
from tpo.evaluate.model import make_answerer


class MCQEval(L.Callback):
    """Logs ``eval/<name>/accuracy`` (and per category) every ``every_n_steps`` optimizer steps.

    Every rank answers the same items (sharded models need all ranks in each forward); keep the
    set small. Add it with ``--trainer.callbacks+=tpo.evaluate.MCQEval --trainer.callbacks.data ...``.
    ``scoring``: ``generate`` a reply and read its letter, or pick the ``likelihood``-best option
    (finer-grained on small models; see :mod:`tpo.evaluate.likelihood`).
    """

    def __init__(self, data: str, benchmark: str = "jsonl", videos: str | None = None, name: str = "mcq",
                 every_n_steps: int = 100, num_frames: int = NUM_FRAMES, limit: int | None = None, batch_size: int = 4,
                 max_new_tokens: int = 8, at_start: bool = True,
                 scoring: Literal["generate", "likelihood"] = "generate"):
        if scoring not in ("generate", "likelihood"):
            raise ConfigError(f"scoring must be 'generate' or 'likelihood', got {scoring!r}")
        self.data, self.benchmark, self.videos, self.name = data, benchmark, videos, name
        self.every_n_steps, self.num_frames, self.limit = every_n_steps, num_frames, limit
        self.batch_size, self.max_new_tokens, self.at_start = batch_size, max_new_tokens, at_start
        self.scoring = scoring
        self.items = None
        self.history: list[tuple[int, float]] = []  # (step, accuracy)

    def setup(self, trainer, pl_module, stage: str) -> None:
        loaded = load_benchmark(self.benchmark, self.data, self.videos)
        if not loaded.items:
            raise TPOError(f"{self.data}: no usable evaluation items ({len(loaded.bad)} malformed)")
        self.items = loaded.items

    def _run(self, trainer, pl_module) -> None:
        answerer = make_answerer(self.scoring, pl_module.adapter, pl_module.policy, pl_module.processor,
                                 self.max_new_tokens)
        was_training = pl_module.policy.training
        pl_module.policy.eval()
        summary = evaluate(self.items, answerer, self.num_frames, self.batch_size, limit=self.limit, progress=False)
        pl_module.policy.train(was_training)
        self.history.append((trainer.global_step, summary["accuracy"]))
        metrics = {f"eval/{self.name}/accuracy": summary["accuracy"]}
        metrics.update({f"eval/{self.name}/{c}": v["accuracy"] for c, v in summary["by_category"].items()})
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.at_start:
            self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and (not self.history or self.history[-1][0] != step):
            self._run(trainer, pl_module)
