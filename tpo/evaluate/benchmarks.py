"""Multiple-choice benchmarks, read from the files their authors distribute.

- ``videomme``: Video-MME ``videomme/test-00000-of-00001.parquet`` (or the same rows as JSON):
  ``videoID``, ``question``, ``options`` (``"A. ..."``), ``answer`` (letter), ``duration``,
  ``task_type``; videos ``<videos>/<videoID>.mp4``; with ``subtitles`` (the authors' ``subtitle/``
  folder), each item's ``<subtitles>/<videoID>.srt`` (see :mod:`tpo.evaluate.subtitles`).
- ``longvideobench``: ``lvb_val.json``: ``video_path``, ``question``, ``candidates``,
  ``correct_choice`` (index), ``duration_group``, ``question_category``.
- ``mlvu``: the ``MLVU/json/`` folder (one JSON per task: ``video``, ``question``,
  ``candidates``, ``answer`` = the correct candidate's text, matched as text, never read as a
  letter, ``question_type``); videos ``<videos>/<task file stem>/<video>``.
- ``jsonl``: ours, one object per line: ``video``, ``question``, ``options`` (texts),
  ``answer`` (letter, index or option text), optional ``id``, ``category``, ``duration``,
  ``frame_indices`` (frames to show instead of uniform sampling), ``meta`` (kept in predictions).

A malformed item is reported (file, item, reason) and left out; the rest load. The three
benchmarks' items also keep their question and options exactly as the file gives them
(``source_question``, ``source_options``), which ``--protocol lmms-eval`` prompts, as lmms-eval's
tasks do: spaces, an empty option, and a text that begins like a label ("J. K. Rowling") included.
``question`` and ``options`` are tidied for ``--protocol tpo``: spaces stripped, and Video-MME's
(and ``jsonl``'s) ``"A. "`` labels removed; LongVideoBench's and MLVU's candidates have no labels,
so nothing is removed from them.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from tpo.errors import TPOError

LETTERS = string.ascii_uppercase
EXPECTED = {"videomme": "Video-MME's videomme/test-00000-of-00001.parquet, or its rows as a JSON list",
            "longvideobench": "LongVideoBench's lvb_val.json",
            "mlvu": "MLVU's json/ folder of task JSON files, or one of them",
            "jsonl": "a JSONL file of items, one per line"}
_LABEL = re.compile(r"^\s*\(?([A-Z])[.):]\s+")


@dataclass
class MCQItem:
    id: str
    video: Path
    question: str
    options: list[str]  # option texts, without "A." labels
    answer: int  # index of the correct option
    category: str = ""
    duration: str = ""
    frame_indices: list[int] | None = None  # None: uniform sampling
    meta: dict = field(default_factory=dict)  # passed through to the predictions (e.g. NIAH depth)
    subtitles: Path | None = None  # the .srt whose lines at the shown frames go in the prompt (may not exist)
    source_question: str | None = None  # as the annotation file gives it (None: as ``question``)
    source_options: list[str] | None = None  # as the file gives them (Video-MME's with their labels)

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


@dataclass
class BadItem:
    source: str
    item: str  # line number or index in the file
    reason: str

    def __str__(self) -> str:
        return f"{self.source} item {self.item}: {self.reason}"


@dataclass
class Loaded:
    items: list[MCQItem] = field(default_factory=list)
    bad: list[BadItem] = field(default_factory=list)


def strip_label(option: str) -> str:
    """``"B. a red square"`` -> ``"a red square"``."""
    return _LABEL.sub("", option, count=1).strip()


def answer_index(answer, options: list[str]) -> int:
    """A letter, an index or the option text -> the option's index; ValueError if none matches."""
    if isinstance(answer, bool):
        raise ValueError(f"answer {answer!r} is not a letter, index or option")
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        index = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, str) and answer.strip() in options:
        index = options.index(answer.strip())
    else:
        raise ValueError(f"answer {answer!r} is not a letter, index or one of the options")
    if not 0 <= index < len(options):
        raise ValueError(f"answer {answer!r} is outside the {len(options)} options")
    return index


def answer_by_text(answer, candidates: list) -> int:
    """MLVU's gold option: the candidate equal to ``answer`` (the last, as MLVU's own
    ``qa_template`` finds it), compared as given; a one-letter answer is a text too."""
    matches = [i for i, candidate in enumerate(candidates) if candidate == answer]
    if not matches:
        raise ValueError(f"answer {answer!r} is not a letter (MLVU's answer is the correct candidate's text), "
                         f"and no candidate is {answer!r}")
    return matches[-1]


def _item(source: str, where: str, raw: dict, loaded: Loaded, *, labelled: bool = True, as_given: bool = False,
          by_text: bool = False, **fields) -> None:
    """Build one item from ``fields`` (callables of ``raw``), recording a bad item on error.
    ``labelled``: options may start with an ``"A. "`` label, removed from ``options``; ``as_given``: a
    benchmark's file, whose texts lmms-eval prompts as they are (kept as ``source_*``; an empty
    option or question is kept, not refused); ``by_text``: the answer is the correct option's text."""
    try:
        values = {k: f(raw) for k, f in fields.items()}
        given = list(values.pop("options"))
        options = [strip_label(str(o)) if labelled else str(o).strip() for o in given]
        if len(options) < 2 or not (as_given or all(options)):
            raise ValueError("needs at least two non-empty options")
        source_question = str(values.pop("question"))
        question = source_question.strip()
        if not (question or as_given):
            raise ValueError("empty question")
        answer = values.pop("answer")
        answer = answer_by_text(answer, given) if by_text else answer_index(answer, options)
        if as_given:
            values.update(source_question=source_question, source_options=[str(o) for o in given])
        loaded.items.append(MCQItem(question=question, options=options, answer=answer, **values))
    except (KeyError, TypeError, ValueError) as err:
        reason = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        loaded.bad.append(BadItem(source, where, reason))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:  # a folder, no permission, ...
        raise TPOError(f"cannot read {path} ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise TPOError(f"cannot read {path} (not UTF-8 text: {err.reason} at byte {err.start})") from None


def _read_json_list(path: Path) -> list:
    try:
        rows = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise TPOError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(rows, list):
        raise TPOError(f"{path}: not a JSON list of items")
    return rows


def _read_parquet(path: Path) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as err:
        raise TPOError(f"cannot read {path} as Parquet ({err})") from None


def load_videomme(path: Path, videos: Path, subtitles: Path | None = None) -> Loaded:
    rows = _read_parquet(path) if path.suffix == ".parquet" else _read_json_list(path)
    loaded = Loaded()
    for i, row in enumerate(rows):
        _item(str(path), str(i), row, loaded, as_given=True, id=lambda r: str(r["question_id"]),
              video=lambda r: videos / f"{r['videoID']}.mp4", question=lambda r: r["question"],
              options=lambda r: list(r["options"]), answer=lambda r: r["answer"],
              category=lambda r: r.get("task_type", ""), duration=lambda r: r.get("duration", ""),
              subtitles=lambda r: subtitles / f"{r['videoID']}.srt" if subtitles else None)
    return loaded


def load_longvideobench(path: Path, videos: Path) -> Loaded:
    loaded = Loaded()
    for i, row in enumerate(_read_json_list(path)):
        _item(str(path), str(i), row, loaded, labelled=False, as_given=True, id=lambda r: str(r["id"]),
              video=lambda r: videos / r["video_path"],
              question=lambda r: r["question"], options=lambda r: list(r["candidates"]),
              answer=lambda r: int(r["correct_choice"]), category=lambda r: r.get("question_category", ""),
              duration=lambda r: str(r.get("duration_group", "")))
    return loaded


def load_mlvu(path: Path, videos: Path) -> Loaded:
    """``path``: the folder of task JSON files (``1_plotQA.json`` ...), or one of them."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise TPOError(f"{path}: no MLVU task JSON files")
    loaded = Loaded()
    for file in files:
        for i, row in enumerate(_read_json_list(file)):
            _item(str(file), str(i), row, loaded, labelled=False, as_given=True, by_text=True,
                  id=lambda r, f=file, i=i: f"{f.stem}/{i}",
                  video=lambda r, f=file: videos / f.stem / r["video"], question=lambda r: r["question"],
                  options=lambda r: list(r["candidates"]), answer=lambda r: r["answer"],
                  category=lambda r, f=file: r.get("question_type", f.stem), duration=lambda r: "")
    return loaded


def load_jsonl(path: Path, videos: Path) -> Loaded:
    loaded = Loaded()
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            loaded.bad.append(BadItem(str(path), f"line {number}", f"not valid JSON ({err.msg})"))
            continue
        _item(str(path), f"line {number}", row, loaded, id=lambda r, n=number: str(r.get("id", f"line-{n}")),
              video=lambda r: videos / r["video"], question=lambda r: r["question"],
              options=lambda r: list(r["options"]), answer=lambda r: r["answer"],
              category=lambda r: str(r.get("category", "")), duration=lambda r: str(r.get("duration", "")),
              frame_indices=lambda r: r.get("frame_indices"), meta=lambda r: r.get("meta", {}))
    return loaded


LOADERS = {"videomme": load_videomme, "longvideobench": load_longvideobench, "mlvu": load_mlvu, "jsonl": load_jsonl}


def video_folder(path: str | Path, videos: str | Path | None = None) -> Path:
    """Where the items' videos are read from: ``videos``, by default the annotations' folder."""
    path = Path(path)
    return Path(videos) if videos else (path if path.is_dir() else path.parent)


def load_benchmark(name: str, path: str | Path, videos: str | Path | None = None,
                   subtitles: str | Path | None = None) -> Loaded:
    """Items of benchmark ``name`` from ``path``; videos under ``videos`` (default: beside ``path``);
    Video-MME's subtitle files under ``subtitles`` (default: none, the "w/o subs" setting).
    Annotations that cannot be read are a :class:`TPOError` saying what was expected."""
    if name not in LOADERS:
        raise TPOError(f"unknown benchmark {name!r}; choose from {list(LOADERS)}")
    path = Path(path)
    if not path.exists():
        raise TPOError(f"{name} annotation file not found: {path}")
    extra = {}
    if subtitles is not None:
        if name != "videomme":
            raise TPOError(f"subtitles are read for videomme only, not {name}")
        if not Path(subtitles).is_dir():
            raise TPOError(f"videomme subtitle folder not found: {subtitles}")
        extra["subtitles"] = Path(subtitles)
    try:
        loaded = LOADERS[name](path, video_folder(path, videos), **extra)
    except TPOError as err:
        raise TPOError(f"{err}; expected {EXPECTED[name]}") from None
    ids = [item.id for item in loaded.items]
    if len(ids) != len(set(ids)):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise TPOError(f"{path}: item id {duplicate!r} appears more than once")
    return loaded
