"""The preference record, the one format of ``preferences.jsonl`` (``docs/record-format.md``), and
reading a JSONL file of them with every record checked.

Every writer (``data_gen``, its importers, the synthetic world) builds a :class:`PreferenceRecord`
and writes :meth:`PreferenceRecord.to_json`; every reader gets records from :func:`read_records`,
which reports each problem with the file, the line and the record id before training starts.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from tqdm.auto import tqdm

from tpo.data.frames import VideoReadError, count_frames
from tpo.errors import TPOError

SCHEMA_VERSION = 1
MANIPULATIONS = ("irrelevant", "incomplete")


class RecordError(TPOError):
    """One record cannot be used; the message says which field is wrong and how."""


@dataclass(frozen=True)
class PreferenceRecord:
    """One preference pair: the answers ``chosen`` (r+, from the frames ``S_a``) and ``rejected``
    (r-, from ``S_b``) to ``question`` about the frames ``frame_indices`` of ``video``.

    Required: ``id`` (unique in its file), ``video`` (relative to the dataset's video root, or
    absolute), ``frame_indices`` (the decoded frames the model sees, in generation and training),
    ``question``, ``chosen``, ``rejected``. Optional: ``chosen_truncated`` / ``rejected_truncated``
    (that answer stopped at a token limit, so training adds no end-of-turn token after it),
    ``manipulation`` (how ``S_b`` was built: ``irrelevant`` or ``incomplete``), ``chosen_frames`` /
    ``rejected_frames`` (``S_a`` / ``S_b``), ``question_type``, ``captions`` (``[{frame, text}]``),
    ``filter`` (the post-filter's verdict), ``provenance`` (which models and seed made it).
    ``schema_version`` is written in every record; a version this code does not know is refused.
    Fields of no known name are kept in ``extra`` and written back unchanged.

    ``line`` and ``video_path`` say where a record read by :func:`read_records` came from; they are
    not part of the format.
    """

    id: str
    video: str
    frame_indices: list[int]
    question: str
    chosen: str
    rejected: str
    chosen_truncated: bool = False
    rejected_truncated: bool = False
    manipulation: str | None = None
    chosen_frames: list[int] | None = None
    rejected_frames: list[int] | None = None
    question_type: str | None = None
    captions: list[dict] | None = None
    filter: dict | None = None
    provenance: dict | None = None
    extra: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    line: int | None = field(default=None, compare=False, repr=False)
    video_path: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        problem = _problem(self)
        if problem:
            raise RecordError(problem)

    @classmethod
    def from_json(cls, value) -> PreferenceRecord:
        """A record from one parsed JSON line; :class:`RecordError` says what is wrong with it."""
        if not isinstance(value, dict):
            raise RecordError("a record must be a JSON object")
        value = dict(value)
        version = value.pop("schema_version", None)
        if version is None:  # files written before the version moved out of the provenance
            version = (value.get("provenance") or {}).get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise RecordError(f"schema_version {version!r} is not one this tpo reads (it reads {SCHEMA_VERSION}); "
                              "convert the file, or use the tpo version that wrote it")
        for key in _REQUIRED:
            if key not in value:
                raise RecordError(f"missing field {key!r}")
        known = {k: value.pop(k) for k in list(value) if k in _FORMAT_FIELDS}
        return cls(**known, extra=value)

    def to_json(self) -> dict:
        """The record as written in ``preferences.jsonl``: unset optional fields and false flags left out."""
        out = {}
        for name in _FORMAT_FIELDS:
            value = getattr(self, name)
            if value is not None and value is not False:
                out[name] = value
        return {**out, **self.extra, "schema_version": self.schema_version}


_REQUIRED = ("id", "video", "frame_indices", "question", "chosen", "rejected")
_FORMAT_FIELDS = tuple(f.name for f in fields(PreferenceRecord)
                       if f.name not in ("extra", "schema_version", "line", "video_path"))
_FRAME_LISTS = ("frame_indices", "chosen_frames", "rejected_frames")


def _problem(rec: PreferenceRecord) -> str | None:
    for key in _REQUIRED[:2] + _REQUIRED[3:]:
        value = getattr(rec, key)
        if not isinstance(value, str):
            return f"field {key!r} must be a string, got {type(value).__name__}"
        if not value.strip():
            return f"field {key!r} is empty"
    for key in _FRAME_LISTS:
        indices = getattr(rec, key)
        if indices is None and key != "frame_indices":
            continue
        if not isinstance(indices, list) or (key == "frame_indices" and not indices):
            return f"field {key!r} must be a {'non-empty ' if key == 'frame_indices' else ''}list of frame numbers"
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
            return f"field {key!r} must hold only non-negative integers"
    for flag in ("chosen_truncated", "rejected_truncated"):
        if not isinstance(getattr(rec, flag), bool):
            return f"field {flag!r} must be true or false, got {getattr(rec, flag)!r}"
    if rec.manipulation is not None and rec.manipulation not in MANIPULATIONS:
        return f"field 'manipulation' is {rec.manipulation!r}, expected one of {list(MANIPULATIONS)}"
    if rec.question_type is not None and not isinstance(rec.question_type, str):
        return "field 'question_type' must be a string"
    for key, kind in (("captions", list), ("filter", dict), ("provenance", dict)):
        if getattr(rec, key) is not None and not isinstance(getattr(rec, key), kind):
            return f"field {key!r} must be a JSON {'list' if kind is list else 'object'}"
    return None


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


def _video_problem(record: PreferenceRecord) -> str | None:
    try:
        total = count_frames(record.video_path)
    except VideoReadError as err:
        return str(err)
    last = max(record.frame_indices)
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


def parse_lines(path: Path) -> tuple[list[PreferenceRecord], list[BadRecord]]:
    """Every line of a preference JSONL file as a record (``line`` set), or as a bad record with the
    reason; no video is opened."""
    parsed, bad, seen = [], [], set()
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                bad.append(BadRecord(str(path), number, None, f"not valid JSON ({err.msg})"))
                continue
            rid = value.get("id") if isinstance(value, dict) and isinstance(value.get("id"), str) else None
            try:
                record = PreferenceRecord.from_json(value)
            except RecordError as err:
                bad.append(BadRecord(str(path), number, rid, str(err)))
                continue
            if record.id in seen:
                bad.append(BadRecord(str(path), number, rid, "duplicate id (first seen on an earlier line)"))
                continue
            seen.add(record.id)
            parsed.append(replace(record, line=number))
    return parsed, bad


def read_records(path: str | Path, video_root: str | Path | None = None,
                 progress: bool = True) -> tuple[list[PreferenceRecord], list[BadRecord]]:
    """Parse and check a preference JSONL file; returns ``(good, bad)`` records.

    ``video_root`` defaults to the ``video_root`` in a ``manifest.json`` beside the file (as
    ``data_gen`` writes it), else to the file's directory; absolute video paths are used as they are.
    Every video is opened once to check that it decodes and holds the requested frames.
    """
    path = Path(path)
    if not path.is_file():
        raise TPOError(f"preference file not found: {path}")
    root = Path(video_root) if video_root is not None else _default_video_root(path)
    parsed, bad = parse_lines(path)
    good = []
    for record in tqdm(parsed, desc=f"checking videos of {path.name}", disable=not progress or len(parsed) < 500):
        record = replace(record, video_path=root / record.video)
        problem = _video_problem(record)
        if problem:
            bad.append(BadRecord(str(path), record.line, record.id, problem))
        else:
            good.append(record)
    bad.sort(key=lambda b: b.line)
    return good, bad


def summarize(bad: list[BadRecord]) -> dict[str, int]:
    """Counts of bad records per kind of problem (the reason up to its first detail)."""
    return dict(Counter(b.reason.split(" (")[0].split(":")[0] for b in bad))
