"""Resumable training of the toy base: its checkpoints, and where a share's base branches off.

The base is trained once and for long (issue 31), over more than one session, so its state is saved
every few hundred steps and a new run goes on from the newest checkpoint. The long-clip moment share
acts only after the branch step (``toy.base.branch_step``), so the steps before it are common to every
share: they live under ``common/``, and each share's last phase under ``share-<share>/``, started from
the common checkpoint at the branch step. A directory belongs to one configuration apart from the
share (``config.json`` there is checked), so a changed recipe never resumes from another's state.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

_STEP = re.compile(r"step-(\d+)\.pt")
KEEP = 2  # newest checkpoints kept per directory (the branch step's is always kept)


@dataclass
class TrainingState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    log: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(), "log": self.log}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        self.log[:] = state["log"]


class CheckpointStore:
    def __init__(self, root: Path, cfg, branch: int):
        self.root, self.branch = Path(root), branch
        self.common = self.root / "common"
        self.share = self.root / f"share-{cfg.long_moment_share}"
        recipe = {k: v for k, v in asdict(cfg).items() if k != "long_moment_share"}
        self.root.mkdir(parents=True, exist_ok=True)
        saved = self.root / "config.json"
        if saved.exists() and json.loads(saved.read_text()) != recipe:
            raise SystemExit(f"error: {self.root} holds checkpoints of another base recipe ({saved}); "
                             "give another checkpoint directory or delete it")
        saved.write_text(json.dumps(recipe, indent=2) + "\n")

    def resume(self, state: TrainingState) -> int:
        """Load the newest checkpoint this share can go on from; the step to start at (0: none)."""
        found = _newest(self.share) or _newest(self.common, at_most=self.branch)
        if found is None:
            return 0
        step, path = found
        state.load_state_dict(torch.load(path, weights_only=False))
        print(f"toy base: resuming at step {step} from {path}", flush=True)
        return step

    def save(self, state: TrainingState, step: int) -> Path:
        folder = self.common if step <= self.branch else self.share
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{step:06d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(state.state_dict(), tmp)
        tmp.replace(path)  # a killed save never leaves a half-written checkpoint
        for old in _steps(folder)[:-KEEP]:
            if old[0] != self.branch:
                old[1].unlink()
        return path


def _steps(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _STEP.fullmatch(p.name))]
    return sorted(found)


def _newest(folder: Path, at_most: int | None = None) -> tuple[int, Path] | None:
    steps = [s for s in _steps(folder) if at_most is None or s[0] <= at_most] if folder.exists() else []
    return steps[-1] if steps else None
