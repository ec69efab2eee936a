"""``tpo data import --format tpo-official``: the TPO authors' released preference data → our records.

The release (``ruili0/LongVA-TPO-10k`` on the Hugging Face Hub) is a ``dataset.csv`` and a video
archive. The column names of that CSV are published nowhere, so this importer assumes nothing beyond
the keys the authors' own LongVA DPO loader reads (``ruili33/TPO``, commit
6c43c58a18d3b506614ee73a7a97fd63641be999, ``longva/longva/train/train_dpo.py``, ``DPODataset`` and
``DPODataCollator``), checks the header against them before anything else, and takes
``--columns key=name,...`` for a file whose columns are named otherwise:

- ``video``: a path joined to ``--video_folder`` (``os.path.join``; no extension is guessed) → our
  ``video``, relative to ``--videos``;
- ``prompt``: its ``<image>`` tokens removed and the text stripped (the loader then puts ``<image>\\n``
  in front, which our adapters' chat templates do instead) → ``question``;
- ``chosen`` / ``rejected``: the two answers, used as they are → ``chosen`` / ``rejected``; the loader's
  SFT term is on ``chosen`` too (``get_sft_loss(policy_chosen_logits, chosen_labels)``);
- ``answer``: read only by the loader's ``lengths`` / ``modality_lengths`` (word counts for
  ``group_by_modality_length`` batching); it is not trained on. Not needed here; when the file has it,
  it is kept in each record as the extra field ``answer`` (training ignores it).

Other columns are left out (the manifest lists them). A record's id is ``tpo-official-<row>`` (the
data row's number, from 1), or the column mapped with ``--columns id=<name>``.

Frames are chosen as that loader chooses them (:func:`authors_frame_indices`), with the video's
frame count and average fps from our decoder interface (``tpo.data.frames.check_video``), and written
as the record's ``frame_indices`` (``S_a = S_b``: the release says nothing about the manipulation).
Rows whose video is missing or unreadable, and rows that cannot be converted, go to ``skipped.jsonl``
with their line, row, kind and reason; none is dropped silently.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data_gen.importers import json_rows, write_dataset
from tpo.data.frames import VideoInfo, VideoReadError, check_video
from tpo.data.records import PreferenceRecord, RecordError
from tpo.errors import ConfigError, TPOError

FORMAT = "tpo-official"
REQUIRED = ("prompt", "chosen", "rejected", "video")  # what the authors' loader cannot do without
OPTIONAL = ("answer", "id")  # ``answer``: the loader's length grouping only; ``id``: only when mapped
VIDEO_FPS = 1  # the loader's ``video_fps`` default
FRAMES_UPBOUND = 32  # the paper's 32 frames (the loader's own default, 0, means no bound)
SOURCE = ("ruili33/TPO@6c43c58a18d3b506614ee73a7a97fd63641be999:longva/longva/train/train_dpo.py "
          "(DPODataset._get_item)")


def authors_frame_indices(num_frames: int, avg_fps: float, video_fps: float = VIDEO_FPS,
                          frames_upbound: int = FRAMES_UPBOUND) -> list[int]:
    """The frames the authors' loader decodes from a video of ``num_frames`` frames at ``avg_fps``:
    every ``round(avg_fps / video_fps)``-th frame from 0, or, when that gives more than
    ``frames_upbound`` (> 0), ``np.linspace(0, num_frames - 1, frames_upbound, dtype=int)``.

    ``round`` is Python's (halves to even), as theirs. A step of 0 (a video under half of ``video_fps``)
    or no fps stops their loader with an error; here it is a ``ValueError`` that says so."""
    if num_frames <= 0:
        raise ValueError("a video with no frames has nothing to sample")
    if not avg_fps or avg_fps <= 0:
        raise ValueError("the container gives no frame rate, so the authors' 1-in-round(fps / video_fps) rule "
                         "has no step")
    step = round(avg_fps / video_fps)
    if step <= 0:
        raise ValueError(f"frame step round({avg_fps:g} fps / video_fps {video_fps:g}) is 0: the authors' loader "
                         "cannot sample this video")
    indices = list(range(0, num_frames, step))
    if frames_upbound > 0 and len(indices) > frames_upbound:
        indices = np.linspace(0, num_frames - 1, frames_upbound, dtype=int).tolist()
    return [int(i) for i in indices]


def parse_columns(text: str | None) -> dict[str, str]:
    """``--columns chosen=pos,rejected=neg`` as ``{key: column}`` (keys: the loader's, plus ``id``)."""
    mapping: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, name = (part.strip() for part in item.partition("="))
        if not sep or not key or not name:
            raise ConfigError(f"--columns {text!r}: each item is key=column (e.g. chosen=preferred), got {item!r}")
        if key not in REQUIRED + OPTIONAL:
            raise ConfigError(f"--columns: unknown key {key!r}; the keys are {', '.join(REQUIRED + OPTIONAL)}")
        if key in mapping:
            raise ConfigError(f"--columns: {key!r} is mapped twice")
        mapping[key] = name
    return mapping


def _is_csv(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return False
    if suffix == ".csv":
        return True
    with path.open(encoding="utf-8-sig") as f:
        start = f.read(4096).lstrip()
    return not start.startswith(("[", "{"))


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict | Exception]]]:
    """The header and ``(line, row)`` of every data row (``line``: where the row starts; a quoted
    cell may span lines)."""
    rows = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise TPOError(f"{path}: empty file, no header") from None
        except csv.Error as err:
            raise TPOError(f"{path}: the header is not CSV ({err})") from None
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                rows.append((start, ValueError(f"not valid CSV ({err})")))
                continue
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                rows.append((start, ValueError(f"{len(cells)} cells for the header's {len(header)} columns")))
                continue
            rows.append((start, dict(zip(header, cells))))
    return header, rows


def _json_header(path: Path, rows: list) -> list[str]:
    objects = [row for _, row in rows if isinstance(row, dict)]
    if not objects:
        raise TPOError(f"{path}: no JSON object rows, so no columns to check")
    return list(dict.fromkeys(key for row in objects for key in row))


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict | Exception]]]:
    """The columns and rows of a CSV, JSON (array) or JSONL file; the header of a JSON file is every key
    of its objects, in the order first seen (a row without one is skipped as a bad row)."""
    if _is_csv(path):
        return _csv_rows(path)
    rows = list(json_rows(path))
    return _json_header(path, rows), rows


def check_header(path: Path, header: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """``{key: column}`` for the keys the file has; one line naming what was found and what is needed
    when a required column is missing."""
    columns = {key: mapping.get(key, key) for key in REQUIRED + OPTIONAL if key != "id" or key in mapping}
    missing = [key for key in columns if (key in REQUIRED or key in mapping) and columns[key] not in header]
    if missing:
        needed = ", ".join(f"{k}" if columns[k] == k else f"{k} (as {columns[k]!r})" for k in missing)
        raise TPOError(f"{path}: the header has columns {header}, but {FORMAT} needs "
                       f"{', '.join(REQUIRED)} (missing: {needed}); if the file names them otherwise, "
                       f"map them with --columns key=column,... (e.g. --columns chosen=preferred)")
    return {key: column for key, column in columns.items() if column in header}


def _cell(row: dict, key: str, column: str) -> str:
    value = row.get(column)
    if value is None:
        raise ValueError(f"no {column!r} value (the {key})")
    if isinstance(value, int) and not isinstance(value, bool) and key == "id":
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"the {column!r} value (the {key}) is a {type(value).__name__}, not a string")
    return value


class _Skip(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def import_tpo_official(input_path: str | Path, videos: str | Path, output: str | Path,
                        video_fps: float = VIDEO_FPS, frames_upbound: int = FRAMES_UPBOUND,
                        columns: str | dict | None = None, progress: bool = True) -> dict:
    """Convert the authors' file into a dataset directory; returns its stats (``records.written``,
    ``skipped``, ``skipped_by_kind``). Each video is opened once, and its last frame decoded."""
    if video_fps <= 0:
        raise ConfigError(f"--video-fps {video_fps:g}: must be > 0")
    if frames_upbound < 0:
        raise ConfigError(f"--frames-upbound {frames_upbound}: must be >= 0 (0: no bound, as the authors' default)")
    source, root = Path(input_path), Path(videos)
    if not source.is_file():
        raise TPOError(f"input file not found: {source}")
    if not root.is_dir():
        raise TPOError(f"videos folder not found: {root}")
    mapping = columns if isinstance(columns, dict) else parse_columns(columns)
    header, rows = read_table(source)
    present = check_header(source, header, mapping)

    infos: dict[Path, VideoInfo | str] = {}
    records, skipped, seen, frame_counts = [], [], set(), Counter()
    shown = tqdm(rows, desc=f"importing {source.name}", unit="row", disable=not progress or len(rows) < 500)
    for number, (line, row) in enumerate(shown, start=1):
        try:
            if isinstance(row, Exception):
                raise _Skip("bad row", str(row))
            if not isinstance(row, dict):
                raise _Skip("bad row", "a row must be a JSON object")
            try:
                values = {key: _cell(row, key, column) for key, column in present.items()}
            except ValueError as err:
                raise _Skip("bad row", str(err)) from None
            question = values["prompt"].replace("<image>", "").strip()
            if not (question and values["chosen"].strip() and values["rejected"].strip() and values["video"].strip()):
                raise _Skip("bad row", "empty prompt, chosen, rejected or video")
            rid = values["id"].strip() if "id" in values else f"{FORMAT}-{number:07d}"
            if not rid:
                raise _Skip("bad row", "empty id")
            if rid in seen:
                raise _Skip("duplicate id", f"duplicate id {rid!r}")
            path = root / values["video"]
            if not path.is_file():
                raise _Skip("video not found", f"video not found: {path}")
            if path not in infos:
                try:
                    infos[path] = check_video(path)
                except VideoReadError as err:
                    infos[path] = f"video unreadable: {path}: {err}"
            info = infos[path]
            if isinstance(info, str):
                raise _Skip("video unreadable", info)
            try:
                frames = authors_frame_indices(info.num_frames, info.fps, video_fps, frames_upbound)
            except ValueError as err:
                raise _Skip("video unreadable", f"video has no usable frame rate: {path}: {err}") from None
            try:
                video = path.relative_to(root).as_posix()
            except ValueError:  # an absolute path in the file, used as it is
                video = path.as_posix()
            try:
                record = PreferenceRecord(
                    id=rid, video=video, frame_indices=frames, question=question, chosen=values["chosen"],
                    rejected=values["rejected"], chosen_frames=frames, rejected_frames=frames,
                    provenance={"imported_from": FORMAT, "source": str(source), "line": line, "row": number},
                    extra={"answer": values["answer"]} if "answer" in values else {})
            except RecordError as err:
                raise _Skip("bad row", str(err)) from None
        except _Skip as skip:
            skipped.append({"line": line, "row": number, "kind": skip.kind, "reason": str(skip)})
            continue
        seen.add(rid)
        frame_counts[len(frames)] += 1
        records.append(record.to_json())

    by_kind = dict(sorted(Counter(s["kind"] for s in skipped).items()))
    manifest = {"columns": present, "ignored_columns": [c for c in header if c not in present.values()],
                "frames": {"rule": "every round(avg_fps / video_fps)-th frame; np.linspace(0, n - 1, frames_upbound, "
                                   "dtype=int) when that gives more than frames_upbound (> 0)",
                           "source": SOURCE, "video_fps": video_fps, "frames_upbound": frames_upbound,
                           "records_by_frame_count": {str(k): v for k, v in sorted(frame_counts.items())}},
                "unused": {"answer": "the authors' loader reads it only for length-grouped batching; kept in each "
                                     "record as the extra field 'answer', not trained on"}}
    return write_dataset(output, root, source, FORMAT, records, skipped, manifest, {"skipped_by_kind": by_kind})
