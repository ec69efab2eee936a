"""The reference model of the DPO term, in one of three forms, chosen once by ``TPOModule``:

- :class:`FrozenCopy`: a frozen copy of the starting policy (the default);
- :class:`AdaptersOff`: with LoRA, the policy with its adapters disabled;
- :class:`Precomputed`: ``log πref(r+|V,q)`` and ``log πref(r-|V,q)`` per record, read from a file.

Each gives the reference log-probs of a batch as a :class:`tpo.loss.Pair` (``.logps(batch)``).

The reference model never changes, so its log-probs are a property of the dataset. They are
computed once, by an explicit ``tpo precompute-ref`` (:func:`precompute`: a ``trainer.predict``
with the same scoring path and layout training uses), saved as JSON keyed
by record id, and the file carries a fingerprint of the model, its processor and prompt settings
and each record's content (video, frames, question, answers and whether each answer was cut off).
Training then holds no reference model.
A file made for another model, processor or record content is refused, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from tpo.builtin import resolve
from tpo.errors import TPOError
from tpo.loss import Pair
from tpo.scoring import pair_logps

FORMAT_VERSION = 3  # 2: the training precision; 3: real frame times, the time instruction, truncation flags
HINT = "delete it or run `python -m tpo precompute-ref --config ...` again"


class StaleReferenceError(TPOError):
    """The reference cache does not belong to this model, processor or data."""


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def model_fingerprint(model_path: str, adapter, dtype: str, precision: str, processor) -> str:
    """Model identity (config + weight files' names and sizes), dtype, training precision, processor
    settings and how the adapter writes prompts (family, time instruction)."""
    path = Path(resolve(model_path))
    files = {}
    if path.is_dir():
        files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.suffix in (".safetensors", ".bin")}
        config = (path / "config.json").read_text() if (path / "config.json").exists() else ""
    else:  # a hub id: its name is what identifies it
        config = str(model_path)
    settings = processor.to_dict() if hasattr(processor, "to_dict") else str(processor)
    prompt = [adapter.family, adapter.time_instruction] + ([True] if adapter.thinking else [])
    return _digest([prompt, dtype, str(precision), config, files, settings])


def record_fingerprint(record) -> str:
    cut = [record.chosen_truncated, record.rejected_truncated]
    return _digest([record.video, record.frame_indices, record.question, record.chosen, record.rejected, cut])


class FrozenCopy:
    """The live reference: a frozen copy of the starting policy, run beside it at every step."""

    def __init__(self, adapter, model):
        self.adapter, self.model = adapter, model

    @torch.no_grad()
    def logps(self, batch: dict) -> Pair:
        return pair_logps(self.adapter, self.model, batch)[0]


class AdaptersOff:
    """LoRA's reference: the policy itself with its adapters disabled, so there is no second copy."""

    def __init__(self, adapter, policy):
        self.adapter, self.policy = adapter, policy

    @torch.no_grad()
    def logps(self, batch: dict) -> Pair:
        with self.policy.disable_adapter():
            return pair_logps(self.adapter, self.policy, batch)[0]


class Precomputed:
    """Reference log-probs read from the file ``tpo precompute-ref`` wrote: no reference model at all."""

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table = table

    def logps(self, batch: dict) -> Pair:
        pairs = torch.stack([self.table[rid] for rid in batch["ids"]]).to(batch["inputs"]["input_ids"].device)
        return Pair(pairs[:, 0], pairs[:, 1])


Reference = FrozenCopy | AdaptersOff | Precomputed


def precompute(trainer, module, datamodule) -> str:
    """Write ``module.hparams.reference_logps`` for the datamodule's records, or check the file there:
    ``trainer.predict`` runs the untrained policy (which *is* the reference) over the training
    loaders with the trainer's processes, strategy and precision, each rank scoring its own share
    in the training order, so the first step's rewards are 0. Returns ``"written"`` or ``"checked"``."""
    path, fingerprint = Path(module.hparams.reference_logps), module.reference_fingerprint(trainer.precision)
    state = "checked"
    if not path.exists():
        outputs = trainer.predict(module, datamodule=datamodule)
        if outputs and isinstance(outputs[0], list):  # one list per loader when there are several
            outputs = [batch for loader in outputs for batch in loader]
        values = _gather(outputs)
        if trainer.is_global_zero:
            save(path, fingerprint, datamodule.all_records(), values)
        trainer.strategy.barrier("reference_logps")
        state = "written"
    datamodule.connect(module)
    datamodule.setup("predict")
    module.reference = read(path, fingerprint, datamodule.all_records())
    return state


def _gather(outputs: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """One ``{record id: [chosen, rejected]}`` from every batch of every rank; a record seen twice
    (a sampler's padding) keeps its first value."""
    values = {}
    for batch in outputs:
        for rid, logps in batch.items():
            values.setdefault(rid, logps)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shares = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shares, values)
        values = {}
        for share in shares:
            for rid, logps in share.items():
                values.setdefault(rid, logps)
    return values


def read(path: str | Path, fingerprint: str, records) -> Precomputed:
    """The precomputed reference for ``records``: the file must exist and match (model, data)."""
    if not Path(path).exists():
        raise StaleReferenceError(f"reference log-probs {path} do not exist: compute them first with "
                                  "`tpo precompute-ref` and the same config")
    return Precomputed(load(path, fingerprint, records))


def save(path: str | Path, fingerprint: str, records, values: dict[str, list[float]]) -> None:
    entries = {r.id: {"key": record_fingerprint(r), "logps": values[r.id]} for r in records}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"version": FORMAT_VERSION, "model": fingerprint, "entries": entries}))
    os.replace(tmp, path)


def load(path: str | Path, fingerprint: str, records) -> dict[str, torch.Tensor]:
    """``{record id: tensor([chosen, rejected])}`` for ``records``; StaleReferenceError on any mismatch."""
    try:
        cache = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise StaleReferenceError(f"reference log-probs {path} are not valid JSON ({err.msg}); {HINT}") from None
    if cache.get("version") != FORMAT_VERSION or cache.get("model") != fingerprint:
        raise StaleReferenceError(f"reference log-probs {path} were computed for another model, dtype, precision, "
                                  f"processor or prompt settings (or an older version of tpo); {HINT}")
    entries, missing, changed = cache["entries"], [], []
    for record in records:
        entry = entries.get(record.id)
        if entry is None:
            missing.append(record.id)
        elif entry["key"] != record_fingerprint(record):
            changed.append(record.id)
    if missing or changed:
        first = (missing or changed)[0]
        raise StaleReferenceError(f"reference log-probs {path} do not match the data: {len(missing)} record(s) "
                                  f"missing, {len(changed)} changed (video, frames, question or answers), e.g. "
                                  f"{first!r}; {HINT}")
    return {r.id: torch.tensor(entries[r.id]["logps"]) for r in records}
