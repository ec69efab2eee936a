"""PreferenceDataModule: preference records -> decoded frames -> padded pair batches."""

# No `from __future__ import annotations` here: jsonargparse reads the ranges of `tpo.settings`'
# types only from evaluated annotations.

import json
import logging
import math
import random
from pathlib import Path
from typing import Literal

import lightning as L
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from tpo.builtin import resolve
from tpo.data.collate import PairCollator
from tpo.data.frames import read_clip
from tpo.data.records import BadRecordsError, PreferenceRecord, read_records, summarize
from tpo.errors import ConfigError, TPOError
from tpo.scoring import pair_collator
from tpo.settings import Fraction, NonNegativeInt, PositiveInt

log = logging.getLogger(__name__)
SKIPPED_FILE = "skipped_records.jsonl"


class PreferenceDataset(Dataset):
    """Decodes exactly each record's ``frame_indices``; items feed a :class:`tpo.data.collate.PairCollator`."""

    def __init__(self, records: list[PreferenceRecord]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        return {"id": rec.id, "question": rec.question, "chosen": rec.chosen, "rejected": rec.rejected,
                "chosen_truncated": rec.chosen_truncated, "rejected_truncated": rec.rejected_truncated,
                "clip": read_clip(rec.video_path, rec.frame_indices)}


def warn_if_prompted_otherwise(path: Path, time_instruction: bool) -> None:
    """Warn when ``data_gen`` (its ``manifest.json``) prompted the policy differently from training."""
    manifest = path.parent / "manifest.json"
    if not manifest.is_file():
        return
    try:
        answer = json.loads(manifest.read_text())["config"]["answer"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return
    generated_with = bool(answer.get("time_instruction", False))
    if answer.get("backend") == "local" and generated_with != time_instruction:
        log.warning("%s: the answers were generated with answer.time_instruction=%s but training uses "
                    "model.time_instruction=%s; the policy is trained on prompts it did not answer", manifest,
                    generated_with, time_instruction)


def split_by_video(records: list[PreferenceRecord], val_fraction: float,
                   seed: int) -> tuple[list[PreferenceRecord], list[PreferenceRecord]]:
    """Hold out ``val_fraction`` of the *videos* (all their pairs), so no video is on both sides."""
    videos = sorted({str(r.video_path) for r in records})
    random.Random(seed).shuffle(videos)
    n_val = math.ceil(val_fraction * len(videos)) if val_fraction > 0 else 0
    if n_val >= len(videos) and videos:
        raise ConfigError(f"val_fraction={val_fraction} leaves no training video (only {len(videos)} videos)")
    held_out = set(videos[:n_val])
    return ([r for r in records if str(r.video_path) not in held_out],
            [r for r in records if str(r.video_path) in held_out])


def select_pairs(records: list[PreferenceRecord], irrelevant_fraction: float | None, max_pairs: int | None,
                 seed: int) -> list[PreferenceRecord]:
    """The training subset: ``max_pairs`` pairs with ``irrelevant_fraction`` of them *irrelevant*.

    The paper's mix-ratio (10:0 ... 0:10) and dataset-size ablations are these two settings.
    """
    rng = random.Random(seed)
    size = len(records) if max_pairs is None else max_pairs
    if size < 1:
        raise ConfigError(f"max_pairs must be at least 1, got {max_pairs}")
    if size > len(records):
        raise ConfigError(f"max_pairs={max_pairs} but only {len(records)} training pairs are available")
    if irrelevant_fraction is None:
        return sorted(rng.sample(records, size), key=lambda r: r.line)
    if not 0.0 <= irrelevant_fraction <= 1.0:
        raise ConfigError(f"irrelevant_fraction must lie in [0, 1], got {irrelevant_fraction}")
    pools = {m: [r for r in records if r.manipulation == m] for m in ("irrelevant", "incomplete")}
    unlabeled = [r for r in records if r.manipulation not in pools]
    if unlabeled:
        raise ConfigError(f"irrelevant_fraction needs every record's 'manipulation'; line {unlabeled[0].line} "
                         f"(id {unlabeled[0].id!r}) and {len(unlabeled) - 1} more have none")
    want = {"irrelevant": round(size * irrelevant_fraction)}
    want["incomplete"] = size - want["irrelevant"]
    for kind, n in want.items():
        if n > len(pools[kind]):
            raise ConfigError(f"irrelevant_fraction={irrelevant_fraction} with {size} pairs needs {n} {kind} "
                             f"pairs; only {len(pools[kind])} are available")
    chosen = rng.sample(pools["irrelevant"], want["irrelevant"]) + rng.sample(pools["incomplete"], want["incomplete"])
    return sorted(chosen, key=lambda r: r.line)


class PreferenceDataModule(L.LightningDataModule):
    """Reads a preference-record JSONL file (``docs/record-format.md``) for TPO training.

    Args:
        path: the ``preferences.jsonl`` file (or ``builtin:demo``).
        video_root: directory record ``video`` paths are relative to (default: the ``video_root`` of a
            ``manifest.json`` beside the file, as data_gen writes it, else the file's directory).
        model_path, family: the model whose processor encodes the batches (linked from ``model.*``).
        batch_size: preference pairs per device per step.
        irrelevant_fraction: share of *irrelevant* pairs in the training set (0.5 = the paper's 5:5);
            ``None`` keeps the file's own mix.
        max_pairs: training-set size (``None``: all pairs).
        val_fraction: share of videos held out for validation.
        on_bad_record: ``error`` stops before training with every problem listed; ``skip`` drops the
            bad records, logs the count per reason and writes them to ``skipped_records.jsonl``.

    Batches are encoded with the adapter and processor of the :class:`tpo.module.TPOModule` they feed
    (``trainer.lightning_module`` in :meth:`setup`; :meth:`connect` for a datamodule used on its own).
    """

    def __init__(
        self, path: str, video_root: str | None = None, batch_size: PositiveInt = 1, num_workers: NonNegativeInt = 0,
        irrelevant_fraction: Fraction | None = None, max_pairs: PositiveInt | None = None,
        val_fraction: Fraction = 0.0, seed: int = 0,
        on_bad_record: Literal["error", "skip"] = "error",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.collator: PairCollator | None = None
        self.train_set: PreferenceDataset | None = None
        self.val_set: PreferenceDataset | None = None
        self.skipped: list = []

    def connect(self, module) -> None:
        """Encode batches with ``module``'s adapter and processor, in its layout (under a Trainer, :meth:`setup`
        does this)."""
        self.collator = pair_collator(module.layout, module.adapter, module.processor)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.collator is None:
            if self.trainer is None:
                raise TPOError("PreferenceDataModule encodes batches for a model: give it to a Trainer with the "
                               "TPOModule, or call connect(module) first")
            self.connect(self.trainer.lightning_module)
        h, time_instruction = self.hparams, self.collator.adapter.time_instruction
        on_rank_zero = self.trainer is None or self.trainer.is_global_zero
        path = Path(resolve(h.path))
        records, bad = read_records(path, h.video_root, progress=on_rank_zero)
        if bad:
            if h.on_bad_record == "error":
                raise BadRecordsError(bad)
            self._report_skipped(bad)
        if not records:
            raise TPOError(f"{h.path}: no usable preference records")
        if on_rank_zero:
            warn_if_prompted_otherwise(path, time_instruction)
        train, val = split_by_video(records, h.val_fraction, h.seed)
        self.train_set = PreferenceDataset(select_pairs(train, h.irrelevant_fraction, h.max_pairs, h.seed))
        self.val_set = PreferenceDataset(val) if val else None
        log.info("preference pairs: %d train, %d validation", len(self.train_set), len(val))

    def all_records(self) -> list[PreferenceRecord]:
        """The training and validation records (what reference log-probs are needed for)."""
        return self.train_set.records + (self.val_set.records if self.val_set is not None else [])

    def _report_skipped(self, bad) -> None:
        self.skipped = bad
        log_dir = self.trainer.log_dir if self.trainer is not None else None  # a broadcast: every rank asks
        if self.trainer is not None and not self.trainer.is_global_zero:
            return
        log.warning("skipping %d bad preference record(s): %s", len(bad), summarize(bad))
        if log_dir is None:
            return
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(log_dir) / SKIPPED_FILE, "w") as f:
            for b in bad:
                f.write(json.dumps({"file": b.file, "line": b.line, "id": b.id, "reason": b.reason}) + "\n")

    def _loader(self, dataset: Dataset, shuffle: bool) -> StatefulDataLoader:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        # A seeded DistributedSampler (also for one process) gives an order that depends only on
        # (seed, epoch); the stateful loader's position is saved in every checkpoint, so a run
        # resumed mid-epoch goes on at the next batch.
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.hparams.seed)
        return StatefulDataLoader(dataset, batch_size=self.hparams.batch_size, sampler=sampler,
                                  collate_fn=self.collator, num_workers=self.hparams.num_workers,
                                  persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        world = self.trainer.world_size if self.trainer else 1
        return self._loader(EvenShares(self.val_set, world), shuffle=False)

    def predict_dataloader(self) -> list[StatefulDataLoader]:
        """The training and validation loaders, in training order: what reference log-probs are
        precomputed over (``tpo precompute-ref``)."""
        return [self.train_dataloader()] + ([self.val_dataloader()] if self.val_set is not None else [])


class ResumableSampler(StatefulDistributedSampler):
    """torchdata's resumable distributed sampler, whose state also holds the epoch: the loader builds
    its iterator (and so the epoch's order) before Lightning sets the resumed epoch on the sampler."""

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.set_epoch(state_dict["epoch"])


class EvenShares(Dataset):
    """``dataset`` padded with repeats to a multiple of ``world`` items, the repeats marked
    ``counted: False``: every rank gets as many batches (a sharded model needs every rank in every
    forward) and validation metrics count each pair once."""

    def __init__(self, dataset: Dataset, world: int):
        self.dataset = dataset
        self.size = math.ceil(len(dataset) / world) * world

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        n = len(self.dataset)
        return {**self.dataset[i % n], "counted": i < n}
