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
                json.dump({"ids": batch["ids"], "logps": logps.tolist()}, f)


def read(path) -> dict[int, dict]:
    """``{step: {"loss": ..., "ids": [all ranks' ids], ...}}`` from a StepLog file."""
    steps: dict[int, dict] = {}
    rows = sorted((json.loads(line) for line in open(path)), key=lambda r: (r["step"], r["rank"]))
    for row in rows:  # ranks append concurrently: ids are put in rank order
        step = steps.setdefault(row["step"], {"ids": [], **{k: row[k] for k in row if k not in ("ids", "rank")}})
        step["ids"] += row["ids"]
    return steps
