"""``python -m data_gen import``: public preference formats → our preference records.

- ``llava-hound``: LLaVA-Hound-DPO style ``{id, video, prompt, chosen, rejected}``;
- ``trl``: TRL-style ``{prompt, chosen, rejected, videos}``, where prompt / answers may be
  plain strings or conversational message lists;
- ``tpo-official``: the TPO authors' released data, in ``data_gen/import_tpo_official.py`` (its own
  frame rule and header check; it writes its directory with :func:`write_dataset`).

The first two carry no frame choice and no manipulation: records get ``num_frames`` uniform
frames (``S_a = S_b`` = those frames) and no ``manipulation`` field. Lines that cannot be
converted go to ``skipped.jsonl`` with the line number and the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_gen.index import VIDEO_EXTENSIONS
from data_gen.write import write_json, write_jsonl
from tpo.data.frames import NUM_FRAMES, VideoReadError, count_frames, uniform_frame_indices
from tpo.data.records import SCHEMA_VERSION, PreferenceRecord
from tpo.errors import ConfigError, TPOError


def _text(value, role: str) -> str:
    """A plain string, or the text of the last ``role`` message of a conversation."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        for message in reversed(value):
            if isinstance(message, dict) and message.get("role") == role:
                content = message.get("content")
                if isinstance(content, str):
                    return content.strip()
                if isinstance(content, list):
                    return " ".join(c.get("text", "") for c in content if isinstance(c, dict)
                                    and c.get("type") == "text").strip()
    raise ValueError(f"expected a string or a list of messages with a {role!r} message")


def _fields(fmt: str, row: dict) -> tuple[str | None, str, str, str, str]:
    """``(id, video, question, chosen, rejected)`` of one input row."""
    if fmt == "llava-hound":
        video = row.get("video")
    else:
        videos = row.get("videos", row.get("video"))
        video = videos[0] if isinstance(videos, list) and videos else videos
    if not isinstance(video, str) or not video:
        raise ValueError("no video path")
    return (str(row["id"]) if "id" in row else None, video, _text(row.get("prompt"), "user"),
            _text(row.get("chosen"), "assistant"), _text(row.get("rejected"), "assistant"))


def _find_video(root: Path, video: str) -> Path:
    path = root / video
    if path.is_file():
        return path
    for ext in VIDEO_EXTENSIONS:  # LLaVA-Hound names videos by id, without an extension
        if path.with_name(path.name + ext).is_file():
            return path.with_name(path.name + ext)
    raise ValueError(f"video not found: {path}")


def json_rows(path: Path):
    """``(line, row)`` of a JSON array (its element number) or a JSONL file; a line that is not JSON is
    ``(line, ValueError)``."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        yield from enumerate(rows, start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                yield number, ValueError(f"not valid JSON ({err.msg})")


def import_file(fmt: str, input_path: str, videos: str, output: str, num_frames: int = NUM_FRAMES) -> tuple[int, int]:
    """Convert ``input_path``; returns ``(records written, lines skipped)``."""
    source, root = Path(input_path), Path(videos)
    if not source.is_file():
        raise TPOError(f"input file not found: {source}")
    records, skipped, seen = [], [], set()
    for number, row in json_rows(source):
        try:
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, dict):
                raise ValueError("a row must be a JSON object")
            rid, video, question, chosen, rejected = _fields(fmt, row)
            if not (question and chosen and rejected):
                raise ValueError("empty prompt, chosen or rejected text")
            path = _find_video(root, video)
            frames = uniform_frame_indices(count_frames(path), num_frames)
            rid = rid or f"{fmt}-{number:07d}"
            if rid in seen:
                raise ValueError(f"duplicate id {rid!r}")
            record = PreferenceRecord(
                id=rid, video=path.relative_to(root).as_posix(), frame_indices=frames, question=question,
                chosen=chosen, rejected=rejected, chosen_frames=frames, rejected_frames=frames,
                provenance={"imported_from": fmt, "source": str(source), "line": number})
        except (ValueError, VideoReadError) as err:
            skipped.append({"line": number, "reason": str(err)})
            continue
        seen.add(rid)
        records.append(record.to_json())
    stats = write_dataset(output, root, source, fmt, records, skipped, {"num_frames": num_frames})
    return stats["records"]["written"], stats["skipped"]


def write_dataset(output: str | Path, root: Path, source: Path, fmt: str, records: list[dict], skipped: list[dict],
                  manifest: dict | None = None, stats: dict | None = None) -> dict:
    """The directory every importer writes: ``preferences.jsonl`` (sorted by id), ``skipped.jsonl``
    (sorted by line), ``stats.json`` and ``manifest.json`` (whose ``video_root`` the records' ``video``
    paths are relative to, as ``tpo fit --data.path OUT/preferences.jsonl`` reads it); returns the stats.
    ``manifest`` and ``stats`` add keys of a format's own."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "preferences.jsonl", records, "id")
    write_jsonl(out / "skipped.jsonl", skipped, "line")
    counts = {"lines": len(records) + len(skipped), "records": {"written": len(records)}, "skipped": len(skipped),
              **(stats or {})}
    write_json(out / "stats.json", counts)
    write_json(out / "manifest.json", {"schema_version": SCHEMA_VERSION, "video_root": str(root.resolve()),
                                       "imported_from": {"format": fmt, "file": str(source.resolve())},
                                       **(manifest or {}), "counts": counts})
    return counts
