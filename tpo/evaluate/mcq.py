"""Running a model over multiple-choice items: predictions JSONL (resumable), accuracy summary."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable, Protocol

from tqdm.auto import tqdm

from tpo.data.frames import NUM_FRAMES, Clip, VideoReadError, count_frames, read_clip, uniform_frame_indices
from tpo.evaluate.answers import extract_choice, mcq_prompt
from tpo.evaluate.benchmarks import LETTERS, MCQItem
from tpo.evaluate.subtitles import SubtitleError, with_subtitles

Answerer = Callable[[list[Clip], list[str]], list[str]]  # (clips, prompts) -> replies


class OptionScorer(Protocol):
    """Scores every option instead of generating a reply (``--scoring likelihood``): the
    prediction is the option with the highest score."""

    def score_options(self, clips: list[Clip], prompts: list[str], options: list[list[str]]) -> list[list[float]]:
        ...


def item_clip(item: MCQItem, num_frames: int) -> Clip:
    indices = item.frame_indices or uniform_frame_indices(count_frames(item.video), num_frames)
    return read_clip(item.video, indices)


def item_prompt(item: MCQItem, clip: Clip) -> str:
    """The question and options, after the subtitles at the clip's frame times when the item has them."""
    prompt = mcq_prompt(item.question, item.options)
    return prompt if item.subtitles is None else with_subtitles(prompt, item.subtitles, clip.times)


def _prediction(item: MCQItem, reply: str | None = None, error: str | None = None,
                option_logps: list[float] | None = None) -> dict:
    """One predictions row. Likelihood scoring has no reply (``None``) and adds ``option_logps``."""
    if option_logps is not None:
        choice = max(range(len(option_logps)), key=option_logps.__getitem__)
    else:
        choice = None if reply is None else extract_choice(reply, item.options)
    return {"id": item.id, "category": item.category, "duration": item.duration, "answer": item.answer_letter,
            "prediction": None if choice is None else LETTERS[choice], "correct": choice == item.answer,
            "reply": reply, "error": error, **({"meta": item.meta} if item.meta else {}),
            **({"option_logps": option_logps} if option_logps is not None else {})}


def _answer_group(answerer: Answerer | OptionScorer, group: list[tuple[MCQItem, Clip, str]]) -> list[dict]:
    """Prediction rows for items whose clips have equally many frames (they batch together)."""
    items, clips, prompts = (list(column) for column in zip(*group))
    if hasattr(answerer, "score_options"):
        scores = answerer.score_options(clips, prompts, [item.options for item in items])
        return [_prediction(item, option_logps=s) for item, s in zip(items, scores)]
    return [_prediction(item, reply) for item, reply in zip(items, answerer(clips, prompts))]


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
             progress: bool = True) -> dict:
    """Answer ``items[:limit]`` (skipping those already in ``predictions_path``); return the summary.

    ``answerer`` generates replies (parsed for a letter) or, an :class:`OptionScorer`, scores the
    options. Prompts are built after the clip is read: subtitles depend on its frame times. A
    missing or unreadable video or subtitle file is recorded as that item's ``error`` and
    counted, not fatal.
    """
    items = items[:limit] if limit is not None else items
    path = Path(predictions_path) if predictions_path else None
    done = read_predictions(path) if path else {}
    todo = sorted((i for i in items if i.id not in done), key=lambda i: len(i.frame_indices or ()) or num_frames)
    out = path.open("a", encoding="utf-8") if path else None
    results = dict(done)
    try:
        with tqdm(total=len(todo), desc="evaluating", unit="item", disable=not progress or not todo) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                ready, rows = [], []
                for item in batch:
                    try:
                        clip = item_clip(item, num_frames)
                        ready.append((item, clip, item_prompt(item, clip)))
                    except (VideoReadError, SubtitleError) as err:
                        rows.append(_prediction(item, error=str(err)))
                groups: dict[int, list] = defaultdict(list)  # equal frame counts batch together
                for entry in ready:
                    groups[len(entry[1])].append(entry)
                for group in groups.values():
                    rows += _answer_group(answerer, group)
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


def _accuracy(rows: list[dict]) -> dict:
    scored = [r for r in rows if r["error"] is None]
    correct = sum(r["correct"] for r in scored)
    return {"accuracy": correct / len(scored) if scored else 0.0, "correct": correct, "scored": len(scored)}


def summarize(predictions: list[dict]) -> dict:
    """Accuracy overall, per category and per duration; errors and unparsed replies counted.

    ``accuracy`` is over items that were answered (no ``error``); ``macro_accuracy`` is the mean of
    the per-category accuracies (MLVU's M-avg).
    """
    summary = {**_accuracy(predictions), "items": len(predictions),
               "errors": sum(r["error"] is not None for r in predictions),
               "unparsed": sum(r["error"] is None and r["prediction"] is None for r in predictions)}
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
                 f"unparsed replies: {summary['unparsed']}")
    return "\n".join(lines)
