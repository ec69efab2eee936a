"""A callback for multi-process tests: every rank appends what it trained at each step to a JSONL file."""

import json

import lightning as L


class StepLog(L.Callback):
    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics  # the step's logged values, averaged over ranks
        row = {"rank": trainer.global_rank, "step": trainer.global_step, "ids": batch["ids"],
               "loss": float(metrics["train/loss"]), "rank_loss": float(outputs["loss"]),
               "rewards/chosen": float(metrics["rewards/chosen"]), "rewards/rejected": float(metrics["rewards/rejected"])}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read(path) -> dict[int, dict]:
    """``{step: {"loss": ..., "ids": [all ranks' ids], ...}}`` from a StepLog file."""
    steps: dict[int, dict] = {}
    for line in open(path):
        row = json.loads(line)
        step = steps.setdefault(row["step"], {"ids": [], **{k: row[k] for k in row if k not in ("ids", "rank")}})
        step["ids"] += row["ids"]
    return dict(sorted(steps.items()))
