"""Reference log-probs computed once: ``log πref(r+|V,q)`` and ``log πref(r-|V,q)`` per record.

The reference model never changes, so its log-probs are a property of the dataset. They are
computed in inference mode with the same shared-prefix path training uses, saved as JSON keyed
by record id, and the file carries a fingerprint of the model, its processor and prompt settings
and each record's content (video, frames, question, answers and whether each answer was cut off).
Training then holds no reference model.
A file made for another model, processor or record content is refused, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tpo.builtin import resolve
from tpo.errors import TPOError
from tpo.shared_prefix import shared_prefix_logps

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
    prompt = [adapter.family, adapter.time_instruction]
    return _digest([prompt, dtype, str(precision), config, files, settings])


def record_fingerprint(record) -> str:
    cut = [record.chosen_truncated, record.rejected_truncated]
    return _digest([record.video, record.frame_indices, record.question, record.chosen, record.rejected, cut])


@torch.no_grad()
def compute(adapter, model, loaders, forward_context=nullcontext, progress: bool = True) -> dict[str, list[float]]:
    """``{record id: [chosen logp, rejected logp]}`` over the batches of ``loaders``.

    With several processes every rank runs ``loaders`` over its own share of the records (all ranks
    take part in every forward of a sharded model) and the shares are gathered on every rank. A
    record seen twice (a sampler's padding) keeps its first value.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    values = {}
    for loader in loaders:
        for batch in tqdm(loader, desc="reference log-probs", disable=not progress):
            batch["inputs"] = {k: v.to(device) for k, v in batch["inputs"].items()}
            with forward_context():
                logps, _ = shared_prefix_logps(adapter, model, batch)
            for rid, chosen, rejected in zip(batch["ids"], logps.chosen.tolist(), logps.rejected.tolist()):
                values.setdefault(rid, [chosen, rejected])
    model.train(was_training)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shares = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shares, values)
        values = {}
        for share in shares:
            for rid, logps in share.items():
                values.setdefault(rid, logps)
    return values


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
