"""Running a model over multiple-choice items: predictions JSONL (resumable), accuracy summary."""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Protocol

from tqdm.auto import tqdm

from tpo.data.frames import NUM_FRAMES, Clip, VideoReadError, read_clip, video_info
from tpo.evaluate.benchmarks import LETTERS, MCQItem
from tpo.evaluate.protocol import Protocol
from tpo.evaluate.subtitles import SubtitleError

Answerer = Callable[[list[Clip], list[str]], list[str]]  # (clips, prompts) -> replies


class OptionScorer(Protocol):
    """Scores every option instead of generating a reply (``--scoring likelihood``): the
    prediction is the option with the highest score."""

    def score_options(self, clips: list[Clip], prompts: list[str], options: list[list[str]]) -> list[list[float]]:
        ...


def item_clip(item: MCQItem, num_frames: int, protocol: Protocol) -> Clip:
    """The item's frames: its own ``frame_indices``, else ``num_frames`` where the protocol puts them."""
    if item.frame_indices:
        return read_clip(item.video, item.frame_indices)
    info = video_info(item.video)
    return read_clip(item.video, protocol.frame_indices(info.num_frames, info.fps, num_frames))


def _letter(choice: int | None) -> str | None:
    return None if choice is None else LETTERS[choice]


def _prediction(item: MCQItem, protocol: Protocol, reply: str | None = None, error: str | None = None,
                option_logps: list[float] | None = None) -> dict:
    """One predictions row. Likelihood scoring has no reply (``None``) and adds ``option_logps``; a
    generated reply is read the protocol's way (``prediction``) and the other way (``other_reading``)."""
    row = {"id": item.id, "category": item.category, "duration": item.duration, "answer": item.answer_letter}
    if option_logps is not None:
        choice = max(range(len(option_logps)), key=option_logps.__getitem__)
        row.update(prediction=LETTERS[choice], correct=choice == item.answer, reply=None, error=None,
                   option_logps=option_logps)
    elif reply is not None:
        read, other = protocol.read(reply, item), protocol.read(reply, item, protocol.other_reading())
        row.update(prediction=_letter(read.choice), correct=read.choice == item.answer, reply=reply, error=None,
                   other_reading=_letter(other.choice), **({"guessed": True} if read.guessed else {}))
    else:
        row.update(prediction=None, correct=False, reply=None, error=error)
    return {**row, **({"meta": item.meta} if item.meta else {})}


def _answer_group(answerer: Answerer | OptionScorer, group: list[tuple[MCQItem, Clip, str]],
                  protocol: Protocol) -> list[dict]:
    """Prediction rows for items whose clips have equally many frames (they batch together)."""
    items, clips, prompts = (list(column) for column in zip(*group))
    if hasattr(answerer, "score_options"):
        scores = answerer.score_options(clips, prompts, [item.options for item in items])
        return [_prediction(item, protocol, option_logps=s) for item, s in zip(items, scores)]
    return [_prediction(item, protocol, reply) for item, reply in zip(items, answerer(clips, prompts))]


def is_answered(row: dict) -> bool:
    """Whether a saved prediction stands; one whose video or subtitles could not be read is retried."""
    return row.get("error") is None


def write_predictions(path: Path, rows) -> None:
    """Replace ``path`` with ``rows``, whole or not at all (a run killed meanwhile keeps the old file)."""
    partial = path.with_suffix(".jsonl.writing")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    partial.replace(path)


def most_common_error(rows: list[dict], items: list[MCQItem]) -> tuple[str, int]:
    """The error most items share, as the first of them saw it, and how many share it. Messages are
    compared with each item's own video and subtitle paths left out."""
    paths = {item.id: [str(p) for p in (item.video, item.subtitles) if p] for item in items}
    seen: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if not is_answered(row):
            kind = row["error"]
            for p in paths.get(row["id"], ()):
                kind = kind.replace(p, "<path>")
            seen[kind].append(row["error"])
    examples = max(seen.values(), key=len)
    return examples[0], len(examples)


def read_predictions(path: Path) -> dict[str, dict]:
    """Predictions already written (a killed run's last partial line is ignored)."""
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[row["id"]] = row
    return done


def evaluate(items: list[MCQItem], answerer: Answerer | OptionScorer, num_frames: int = NUM_FRAMES, batch_size: int = 4,
             predictions_path: str | Path | None = None, limit: int | None = None,
             progress: bool = True, protocol: Protocol | None = None, prefetch: int = 1) -> dict:
    """Answer ``items[:limit]`` (skipping those answered in ``predictions_path``); return the summary.

    ``answerer`` generates replies (read for an option) or, an :class:`OptionScorer`, scores the
    options. ``protocol`` (default: ours, ``Protocol()``) places the frames, writes the prompts and
    reads the replies; prompts are built after the clip is read (subtitles depend on its timing).
    A missing or unreadable video or subtitle file is recorded as that item's ``error`` and
    counted, not fatal, and retried by the next call with the same ``predictions_path`` (its row
    replaced). The next ``prefetch`` batches decode while the model answers one.
    """
    protocol = protocol or Protocol()
    items = items[:limit] if limit is not None else items
    path = Path(predictions_path) if predictions_path else None
    saved = read_predictions(path) if path else {}
    done = {item_id: row for item_id, row in saved.items() if is_answered(row)}
    if len(done) < len(saved):
        write_predictions(path, done.values())  # the errored items' rows make way for their retries
    todo = sorted((i for i in items if i.id not in done), key=lambda i: len(i.frame_indices or ()) or num_frames)
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    results = dict(done)
    out = path.open("a", encoding="utf-8") if path else None
    try:
        with tqdm(total=len(todo), desc="evaluating", unit="item", disable=not progress or not todo) as bar:
            for batch, (ready, rows) in zip(batches, _prepared(batches, num_frames, protocol, prefetch)):
                groups: dict[int, list] = defaultdict(list)  # equal frame counts batch together
                for entry in ready:
                    groups[len(entry[1])].append(entry)
                for group in groups.values():
                    rows += _answer_group(answerer, group, protocol)
                for row in rows:
                    results[row["id"]] = row
                    if out:
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                if out:
                    out.flush()
                bar.update(len(batch))
    finally:
        if out:
            out.close()
    return summarize([results[i.id] for i in items if i.id in results])


def _prepare(batch: list[MCQItem], num_frames: int, protocol: Protocol) -> tuple[list, list[dict]]:
    """A batch's decoded clips and prompts, and the error rows of items that could not be read."""
    ready, errors = [], []
    for item in batch:
        try:
            clip = item_clip(item, num_frames, protocol)
            ready.append((item, clip, protocol.prompt(item, clip)))
        except (VideoReadError, SubtitleError) as err:
            errors.append(_prediction(item, protocol, error=str(err)))
    return ready, errors


def _prepared(batches: list[list[MCQItem]], num_frames: int, protocol: Protocol, ahead: int):
    """:func:`_prepare` of each batch in turn, the next ``ahead`` batches decoding in a background
    thread while the model answers the current one (benchmarks/eval_prefetch.py measures it; on a
    CPU-only run the decoding thread competes with the model for the cores and ``tpo evaluate`` uses 0)."""
    if ahead == 0:
        yield from (_prepare(batch, num_frames, protocol) for batch in batches)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(_prepare, batch, num_frames, protocol) for batch in batches[:ahead]]
        for i in range(len(batches)):
            if i + ahead < len(batches):
                pending.append(pool.submit(_prepare, batches[i + ahead], num_frames, protocol))
            yield pending.pop(0).result()


def _accuracy(rows: list[dict]) -> dict:
    scored = [r for r in rows if r["error"] is None]
    correct = sum(r["correct"] for r in scored)
    return {"accuracy": correct / len(scored) if scored else 0.0, "correct": correct, "scored": len(scored)}


def summarize(predictions: list[dict]) -> dict:
    """Accuracy overall, per category and per duration; errors and unparsed replies counted.

    ``accuracy`` is over items that were answered (no ``error``); ``macro_accuracy`` is the mean of
    the per-category accuracies (MLVU's M-avg). ``guessed``: replies LongVideoBench's reading could
    not read and gave a random option; ``read_differently``: replies the other reading reads as
    another option (or as none).
    """
    replies = [r for r in predictions if r.get("reply") is not None]
    summary = {**_accuracy(predictions), "items": len(predictions),
               "errors": sum(r["error"] is not None for r in predictions),
               "unparsed": sum(r["error"] is None and (r["prediction"] is None or r.get("guessed", False))
                               for r in predictions),
               "guessed": sum(r.get("guessed", False) for r in replies),
               "read_differently": sum(r.get("other_reading") != r["prediction"] for r in replies)}
    for field in ("category", "duration"):
        groups = defaultdict(list)
        for row in predictions:
            if row[field]:
                groups[row[field]].append(row)
        summary[f"by_{field}"] = {k: _accuracy(v) for k, v in sorted(groups.items())}
    categories = summary["by_category"].values()
    summary["macro_accuracy"] = sum(c["accuracy"] for c in categories) / len(categories) if categories else None
    return summary


def format_table(summary: dict, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'':34}{'accuracy':>9}{'items':>7}")
    lines.append(f"{'overall':34}{100 * summary['accuracy']:>8.1f}%{summary['scored']:>7}")
    for field in ("category", "duration"):
        for name, acc in summary[f"by_{field}"].items():
            lines.append(f"  {field} {name}"[:34].ljust(34) + f"{100 * acc['accuracy']:>8.1f}%{acc['scored']:>7}")
    if summary["macro_accuracy"] is not None and len(summary["by_category"]) > 1:
        lines.append(f"{'mean over categories':34}{100 * summary['macro_accuracy']:>8.1f}%")
    lines.append(f"errors (missing/unreadable video or subtitles): {summary['errors']}; "
                 f"unparsed replies: {summary['unparsed']} (of which given a random option: {summary['guessed']}); "
                 f"read differently by the other reading: {summary['read_differently']}")
    return "\n".join(lines)
