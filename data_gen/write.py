"""Stage 8: preference records, the manifest and the stats of a dataset directory.

Output files (all replaced atomically, sorted, so identical inputs give identical bytes):

- ``preferences.jsonl``: the kept pairs (:class:`tpo.data.records.PreferenceRecord`, ``docs/record-format.md``);
- ``preferences_sft_llm.jsonl``: the SFT_LLM baseline's file: each kept record again, its ``chosen`` the LLM's
  answer from the captions (``chosen_source: "llm"``), for supervised fine-tuning (beta 0); empty when
  ``sft_llm.enabled=false``;
- ``filtered_out.jsonl``: pairs the post-filter (or the identical-answer check) dropped, with why;
- ``skipped.jsonl``: videos left out (unreadable, truncated, too short) with the reason;
- ``failures.jsonl``: items a model call could not produce, with the stage and the reason;
- ``stats.json``: counts (integers only, so shards add up); ``manifest.json``: config, versions,
  counts, token usage and this run's timings and retries.
"""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from importlib import metadata
from pathlib import Path

from data_gen.items import Pair
from tpo.data.records import PreferenceRecord

OUTPUT_FILES = ("preferences.jsonl", "preferences_sft_llm.jsonl", "filtered_out.jsonl", "skipped.jsonl",
                "failures.jsonl")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict], key: str) -> None:
    rows = sorted(rows, key=lambda r: r[key])
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_json(path: Path, value: dict) -> None:
    atomic_write(path, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def build_record(pair: Pair, verdict: dict, provenance: dict) -> dict:
    seg, question = pair.question.segment, pair.question
    return PreferenceRecord(
        id=pair.id, video=seg.video, frame_indices=list(seg.frame_indices), question=question.text,
        chosen=pair.chosen, rejected=pair.rejected, chosen_truncated=pair.chosen_truncated,
        rejected_truncated=pair.rejected_truncated, manipulation=seg.kind,
        chosen_frames=list(seg.chosen_frames), rejected_frames=list(seg.rejected_frames),
        question_type=question.type, captions=list(pair.captions), filter=verdict, provenance=provenance,
    ).to_json()


def build_sft_record(record: dict, answer: dict, model: str) -> dict:
    """The SFT_LLM twin of a kept ``record``: same id, video, frames and question; ``chosen`` the LLM's answer
    (``chosen_truncated`` if it stopped at ``sft_llm.max_tokens``), ``rejected`` the pair's own (with beta 0
    it trains nothing); ``chosen_source: "llm"`` marks it. No ``filter``: the verdict judged the policy's answer."""
    fields = {k: v for k, v in record.items() if k not in ("chosen", "chosen_truncated", "filter", "provenance")}
    return PreferenceRecord.from_json({
        **fields, "chosen": answer["text"], "chosen_truncated": answer["truncated"], "chosen_source": "llm",
        "provenance": {**record["provenance"], "sft_llm": model}}).to_json()


def category(reason: str) -> str:
    """A reason's kind, for counting: the text before its first detail."""
    return reason.split(":")[0].split(" (")[0].strip()


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("tpo", "torch", "transformers", "openai", "decord", "av", "omegaconf"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def add_counts(a: dict, b: dict) -> dict:
    """Sum two nested dicts of integers (shard stats)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = add_counts(out.get(key, {}), value) if isinstance(value, dict) else out.get(key, 0) + value
    return out


def count_by(items, key) -> dict:
    return dict(sorted(Counter(key(i) for i in items).items()))
