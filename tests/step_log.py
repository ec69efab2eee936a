"""Callbacks for multi-process tests, added to `tpo fit` runs from the command line (PYTHONPATH=tests)."""

import json

import lightning as L
import torch

from tpo.shared_prefix import shared_prefix_logps


class StepLog(L.Callback):
    """Every rank appends what it trained at each step (pair ids, loss, rewards) to a JSONL file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics  # the step's logged values, averaged over ranks
        row = {"rank": trainer.global_rank, "step": trainer.global_step, "ids": batch["ids"],
               "loss": float(metrics["train/loss"]), "rewards/chosen": float(metrics["rewards/chosen"]),
               "rewards/rejected": float(metrics["rewards/rejected"])}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class FinalLogps(L.Callback):
    """At the end of training, the (sharded) policy's log-probs of the first validation pairs, written by rank 0."""

    def __init__(self, path: str, pairs: int = 2):
        self.path, self.pairs = path, pairs

    def on_train_end(self, trainer, pl_module):
        dm = trainer.datamodule
        batch = dm.collator([dm.val_set[i] for i in range(self.pairs)])
        pl_module.policy.eval()
        with torch.no_grad():  # every rank takes part: the sharded model needs all of them
            logps, _ = shared_prefix_logps(pl_module.adapter, pl_module.policy, batch)
        pl_module.policy.train()
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                json.dump({"ids": batch["ids"], "logps": torch.cat(logps).tolist()}, f)


def read(path) -> dict[int, dict]:
    """``{step: {"loss": ..., "ids": [all ranks' ids], ...}}`` from a StepLog file."""
    steps: dict[int, dict] = {}
    rows = sorted((json.loads(line) for line in open(path)), key=lambda r: (r["step"], r["rank"]))
    for row in rows:  # ranks append concurrently: ids are put in rank order
        step = steps.setdefault(row["step"], {"ids": [], **{k: row[k] for k in row if k not in ("ids", "rank")}})
        step["ids"] += row["ids"]
    return steps


class PoisonGradient(L.Callback):
    """Makes one gradient NaN on one rank before the optimizer steps ``steps`` (1-based), and writes, per
    rank and step, whether the step changed this rank's weights and whether they are all finite."""

    def __init__(self, path: str, steps: list[int], rank: int = 1):
        self.path, self.steps, self.rank = path, set(steps), rank
        self.before = None

    @staticmethod
    def _local(tensor):
        return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor shard, or the tensor

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before = [self._local(p).detach().clone() for p in pl_module.policy.parameters()]
        if trainer.global_step + 1 in self.steps and trainer.global_rank == self.rank:
            grad = next(self._local(p.grad) for p in pl_module.policy.parameters()
                        if p.grad is not None and self._local(p.grad).numel())
            grad.view(-1)[0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        after = [self._local(p).detach() for p in pl_module.policy.parameters()]
        row = {"rank": trainer.global_rank, "step": trainer.global_step,
               "changed": any(not torch.equal(a, b) for a, b in zip(after, self.before)),
               "finite": all(bool(torch.isfinite(a).all()) for a in after)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class Stall(L.Callback):
    """Rank ``rank`` sleeps ``seconds`` before its first optimizer step, while the others wait in a collective."""

    def __init__(self, seconds: float, rank: int = 0):
        self.seconds, self.rank = seconds, rank

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        import time

        if trainer.global_step == 0 and trainer.global_rank == self.rank:
            time.sleep(self.seconds)


class InferenceModeLog(L.Callback):
    """Whether each validation and prediction batch ran under ``torch.inference_mode``, one JSON line each."""

    def __init__(self, path: str):
        self.path = path

    def _log(self, stage: str) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"stage": stage, "inference_mode": torch.is_inference_mode_enabled()}) + "\n")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._log("validate")

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._log("predict")


class Slow(L.Callback):
    """Sleeps ``seconds`` after every training step, so that a test can signal a run between its steps."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        time.sleep(self.seconds)
