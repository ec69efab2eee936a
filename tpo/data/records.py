"""Preference records (see ARCHITECTURE.md): reading a JSONL file and checking every record.

Every problem is reported with the file, the line and the record id, before training starts.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from tpo.data.frames import VideoReadError, count_frames
from tpo.errors import TPOError

REQUIRED_TEXT = ("id", "video", "question", "chosen", "rejected")
MANIPULATIONS = ("irrelevant", "incomplete")
TRUNCATION_FLAGS = ("chosen_truncated", "rejected_truncated")  # optional: the answer stopped at a token limit


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" + (f" (id {self.id!r})" if self.id else "")
        return f"{where}: {self.reason}"


class BadRecordsError(TPOError):
    """Raised when a preference file has records that cannot be trained on."""

    def __init__(self, bad: list[BadRecord], shown: int = 20):
        lines = [str(b) for b in bad[:shown]]
        if len(bad) > shown:
            lines.append(f"... and {len(bad) - shown} more")
        hint = "fix them, or set `data.on_bad_record: skip` to train on the remaining records"
        super().__init__(f"{len(bad)} bad preference record(s):\n  " + "\n  ".join(lines) + f"\n{hint}")
        self.bad = bad


@dataclass
class Record:
    """One preference pair plus where it came from (``line``) and its resolved video path."""

    data: dict
    line: int
    video_path: Path

    def __getitem__(self, key):
        return self.data[key]


def _field_problem(rec: dict) -> str | None:
    for key in REQUIRED_TEXT:
        if key not in rec:
            return f"missing field {key!r}"
        if not isinstance(rec[key], str):
            return f"field {key!r} must be a string, got {type(rec[key]).__name__}"
        if not rec[key].strip():
            return f"field {key!r} is empty"
    indices = rec.get("frame_indices")
    if indices is None:
        return "missing field 'frame_indices'"
    if not isinstance(indices, list) or not indices:
        return "field 'frame_indices' must be a non-empty list of frame numbers"
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        return "field 'frame_indices' must hold only non-negative integers"
    for flag in TRUNCATION_FLAGS:
        if not isinstance(rec.get(flag, False), bool):
            return f"field {flag!r} must be true or false, got {rec[flag]!r}"
    if "manipulation" in rec and rec["manipulation"] not in MANIPULATIONS:
        return f"field 'manipulation' is {rec['manipulation']!r}, expected one of {list(MANIPULATIONS)}"
    return None


def _video_problem(record: Record) -> str | None:
    try:
        total = count_frames(record.video_path)
    except VideoReadError as err:
        return str(err)
    last = max(record["frame_indices"])
    if last >= total:
        return f"frame index {last} is beyond the video's {total} frames ({record.video_path})"
    return None


def _default_video_root(path: Path) -> Path:
    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        try:
            root = json.loads(manifest.read_text()).get("video_root")
        except (json.JSONDecodeError, AttributeError):
            raise TPOError(f"{manifest}: not a valid manifest (expected a JSON object)") from None
        if root:
            return Path(root)
    return path.parent


def read_records(path: str | Path, video_root: str | Path | None = None,
                 progress: bool = True) -> tuple[list[Record], list[BadRecord]]:
    """Parse and check a preference JSONL file; returns ``(good, bad)`` records.

    ``video_root`` defaults to the ``video_root`` in a ``manifest.json`` beside the file (as
    ``data_gen`` writes it), else to the file's directory; absolute video paths are used as they are.
    Every video is opened once to check that it decodes and holds the requested frames.
    """
    path = Path(path)
    if not path.is_file():
        raise TPOError(f"preference file not found: {path}")
    root = Path(video_root) if video_root is not None else _default_video_root(path)
    parsed: list[Record] = []
    bad: list[BadRecord] = []
    seen: Counter = Counter()
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as err:
                bad.append(BadRecord(str(path), number, None, f"not valid JSON ({err.msg})"))
                continue
            if not isinstance(rec, dict):
                bad.append(BadRecord(str(path), number, None, "a record must be a JSON object"))
                continue
            rid = rec.get("id") if isinstance(rec.get("id"), str) else None
            problem = _field_problem(rec)
            if problem is None and seen[rid]:
                problem = "duplicate id (first seen on an earlier line)"
            if problem:
                bad.append(BadRecord(str(path), number, rid, problem))
                continue
            seen[rid] += 1
            parsed.append(Record(rec, number, root / rec["video"]))
    good = []
    for record in tqdm(parsed, desc=f"checking videos of {path.name}", disable=not progress or len(parsed) < 500):
        problem = _video_problem(record)
        if problem:
            bad.append(BadRecord(str(path), record.line, record["id"], problem))
        else:
            good.append(record)
    bad.sort(key=lambda b: b.line)
    return good, bad


def summarize(bad: list[BadRecord]) -> dict[str, int]:
    """Counts of bad records per kind of problem (the reason up to its first detail)."""
    return dict(Counter(b.reason.split(" (")[0].split(":")[0] for b in bad))
