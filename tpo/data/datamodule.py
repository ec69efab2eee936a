"""PreferenceDataModule: preference records -> decoded frames -> padded pair batches."""

# No `from __future__ import annotations` here: jsonargparse reads the ranges of `tpo.settings`'
# types only from evaluated annotations.

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
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


Selection = Literal["closest", "exact"]


def select_pairs(records: list[PreferenceRecord], irrelevant_fraction: float | None, max_pairs: int | None,
                 seed: int, selection: Selection = "closest") -> list[PreferenceRecord]:
    """The training subset: at most ``max_pairs`` pairs, ``irrelevant_fraction`` of them *irrelevant*.

    ``closest`` trains on ``size = min(max_pairs, len(records))`` pairs, ``round(size * irrelevant_fraction)``
    of them irrelevant where each kind has enough pairs; otherwise on all pairs of the scarcer kind and the
    other kind filling the rest (the mix nearest the asked one at that size). ``exact`` takes ``max_pairs``
    pairs at that mix or raises. Where the data allows the asked ones, both modes pick the same pairs.
    The paper's mix-ratio (10:0 ... 0:10) and dataset-size ablations are these two settings.
    """
    rng = random.Random(seed)
    size = _training_size(len(records), max_pairs, selection)
    if irrelevant_fraction is None:
        return sorted(rng.sample(records, size), key=lambda r: r.line)
    pools = _manipulation_pools(records, irrelevant_fraction)
    n_irrelevant = _irrelevant_count(size, irrelevant_fraction, pools, selection)
    chosen = rng.sample(pools["irrelevant"], n_irrelevant) + rng.sample(pools["incomplete"], size - n_irrelevant)
    return sorted(chosen, key=lambda r: r.line)


def _training_size(available: int, max_pairs: int | None, selection: Selection) -> int:
    if max_pairs is None:
        return available
    if max_pairs < 1:
        raise ConfigError(f"max_pairs must be at least 1, got {max_pairs}")
    if max_pairs > available and selection == "exact":
        raise ConfigError(f"max_pairs={max_pairs} but only {available} training pairs are available "
                          f"(data.selection is exact; set --data.selection closest to train on all {available})")
    return min(max_pairs, available)


def _manipulation_pools(records: list[PreferenceRecord],
                        irrelevant_fraction: float) -> dict[str, list[PreferenceRecord]]:
    if not 0.0 <= irrelevant_fraction <= 1.0:
        raise ConfigError(f"irrelevant_fraction must lie in [0, 1], got {irrelevant_fraction}")
    pools = {m: [r for r in records if r.manipulation == m] for m in ("irrelevant", "incomplete")}
    unlabeled = [r for r in records if r.manipulation not in pools]
    if unlabeled:
        raise ConfigError(f"irrelevant_fraction needs every record's 'manipulation'; line {unlabeled[0].line} "
                          f"(id {unlabeled[0].id!r}) and {len(unlabeled) - 1} more have none; set "
                          "--data.irrelevant_fraction null to keep the file's mix")
    return pools


def _irrelevant_count(size: int, irrelevant_fraction: float, pools: dict[str, list], selection: Selection) -> int:
    want = {"irrelevant": round(size * irrelevant_fraction)}
    want["incomplete"] = size - want["irrelevant"]
    if selection == "exact":
        for kind, n in want.items():
            if n > len(pools[kind]):
                raise ConfigError(f"irrelevant_fraction={irrelevant_fraction} with {size} pairs needs {n} {kind} "
                                  f"pairs; only {len(pools[kind])} are available (data.selection is exact; set "
                                  "--data.selection closest for the closest mix the data allows, or "
                                  "--data.irrelevant_fraction null for the file's own mix)")
    # the asked count, clamped to what each pool holds (size <= both pools together: the clamp is consistent)
    return min(max(want["irrelevant"], size - len(pools["incomplete"])), len(pools["irrelevant"]))


@dataclass(frozen=True)
class PairSelection:
    """The training pairs used, beside the ``max_pairs`` and ``irrelevant_fraction`` asked for."""

    pairs: int
    available: int
    irrelevant: int
    incomplete: int
    max_pairs: int | None = None
    irrelevant_fraction: float | None = None

    @classmethod
    def of(cls, chosen: list[PreferenceRecord], available: int, max_pairs: int | None,
           irrelevant_fraction: float | None) -> "PairSelection":
        kinds = Counter(r.manipulation for r in chosen)
        return cls(len(chosen), available, kinds["irrelevant"], kinds["incomplete"], max_pairs, irrelevant_fraction)

    @property
    def fraction(self) -> float | None:
        """The share of irrelevant pairs; ``None`` when some pair has no ``manipulation``."""
        labeled = self.irrelevant + self.incomplete
        return self.irrelevant / labeled if labeled and labeled == self.pairs else None

    @property
    def off_mix(self) -> bool:
        """The mix is not the asked one (to the nearest pair): the data holds too few of one kind."""
        return self.irrelevant_fraction is not None and self.irrelevant != round(self.pairs * self.irrelevant_fraction)

    def metrics(self) -> dict[str, float]:
        counts = {"data/pairs": self.pairs, "data/available_pairs": self.available,
                  "data/irrelevant_pairs": self.irrelevant, "data/incomplete_pairs": self.incomplete}
        return counts if self.fraction is None else {**counts, "data/irrelevant_fraction": self.fraction}

    def __str__(self) -> str:
        text = f"{self.pairs} of {self.available} available"
        if self.max_pairs is not None and self.max_pairs != self.pairs:
            text += f" (max_pairs {self.max_pairs})"
        if self.fraction is not None:
            text += (f"; {self.irrelevant} irrelevant + {self.incomplete} incomplete = irrelevant fraction "
                     f"{self.fraction:.3g}")
            if self.irrelevant_fraction is not None and self.fraction != self.irrelevant_fraction:
                text += f" (asked {self.irrelevant_fraction:g})"
        return text


class PreferenceDataModule(L.LightningDataModule):
    """Reads a preference-record JSONL file (``docs/record-format.md``) for TPO training.

    Args:
        path: the ``preferences.jsonl`` file (or ``builtin:demo``).
        video_root: directory record ``video`` paths are relative to (default: the ``video_root`` of a
            ``manifest.json`` beside the file, as data_gen writes it, else the file's directory).
        batch_size: preference pairs per device per step.
        num_workers: DataLoader worker processes decoding videos (0: in the training process).
        irrelevant_fraction: share of *irrelevant* pairs in the training set (0.5 = the paper's 5:5);
            ``None`` keeps the file's own mix.
        max_pairs: at most this many training pairs (``None``: all).
        selection: how ``max_pairs`` and ``irrelevant_fraction`` meet the data. ``closest``: every training
            pair up to ``max_pairs``, at the asked mix where each kind has enough pairs, else at the nearest
            one (all of the scarcer kind, the other filling the rest). ``exact``: exactly ``max_pairs``
            pairs with ``round(max_pairs * irrelevant_fraction)`` irrelevant ones, or the run stops (for
            ablations). The pairs and mix used are in the fit summary and logged as ``data/*`` scalars.
        val_fraction: share of videos held out for validation.
        seed: seed of the validation split, of the training pairs' selection and of their order.
        on_bad_record: ``error`` stops before training with every problem listed; ``skip`` drops the
            bad records, logs the count per reason and writes them to ``skipped_records.jsonl``.

    Batches are encoded with the adapter and processor of the :class:`tpo.module.TPOModule` they feed
    (``trainer.lightning_module`` in :meth:`setup`; :meth:`connect` for a datamodule used on its own).
    """

    def __init__(
        self, path: str, video_root: str | None = None, batch_size: PositiveInt = 1, num_workers: NonNegativeInt = 0,
        irrelevant_fraction: Fraction | None = None, max_pairs: PositiveInt | None = None,
        selection: Selection = "closest", val_fraction: Fraction = 0.0, seed: int = 0,
        on_bad_record: Literal["error", "skip"] = "error",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.collator: PairCollator | None = None
        self.train_set: PreferenceDataset | None = None
        self.val_set: PreferenceDataset | None = None
        self.skipped: list = []
        self.selection: PairSelection | None = None

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
        chosen = select_pairs(train, h.irrelevant_fraction, h.max_pairs, h.seed, h.selection)
        self.selection = PairSelection.of(chosen, len(train), h.max_pairs, h.irrelevant_fraction)
        self.train_set = PreferenceDataset(chosen)
        self.val_set = PreferenceDataset(val) if val else None
        log.info("preference pairs: %d train, %d validation", len(self.train_set), len(val))
        if on_rank_zero and self.selection.off_mix:
            log.warning("training on the closest mix the data allows: %s", self.selection)
        self._log_selection()

    def all_records(self) -> list[PreferenceRecord]:
        """The training and validation records (what reference log-probs are needed for)."""
        return self.train_set.records + (self.val_set.records if self.val_set is not None else [])

    def _log_selection(self) -> None:
        """The pairs and mix used, as ``data/*`` scalars at step 0 of a fit (loggers write from rank 0 only)."""
        if self.trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return
        for logger in self.trainer.loggers:
            logger.log_metrics(self.selection.metrics(), step=0)

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
