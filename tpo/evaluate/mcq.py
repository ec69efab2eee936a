"""Running a model over multiple-choice items: predictions JSONL (resumable), accuracy summary."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from tpo.data.frames import Clip, VideoReadError, count_frames, read_clip, uniform_frame_indices
from tpo.evaluate.answers import extract_choice, mcq_prompt
from tpo.evaluate.benchmarks import LETTERS, MCQItem

Answerer = Callable[[list[Clip], list[str]], list[str]]  # (clips, prompts) -> replies


def item_clip(item: MCQItem, num_frames: int) -> Clip:
    indices = item.frame_indices or uniform_frame_indices(count_frames(item.video), num_frames)
    return read_clip(item.video, indices)


def _prediction(item: MCQItem, reply: str | None = None, error: str | None = None) -> dict:
    choice = None if reply is None else extract_choice(reply, item.options)
    return {"id": item.id, "category": item.category, "duration": item.duration, "answer": item.answer_letter,
            "prediction": None if choice is None else LETTERS[choice], "correct": choice == item.answer,
            "reply": reply, "error": error, **({"meta": item.meta} if item.meta else {})}


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


def evaluate(items: list[MCQItem], answerer: Answerer, num_frames: int = 32, batch_size: int = 4,
             predictions_path: str | Path | None = None, limit: int | None = None,
             progress: bool = True) -> dict:
    """Answer ``items[:limit]`` (skipping those already in ``predictions_path``); return the summary.

    A missing or unreadable video is recorded as that item's ``error`` and counted, not fatal.
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
                        ready.append((item, item_clip(item, num_frames)))
                    except VideoReadError as err:
                        rows.append(_prediction(item, error=str(err)))
                groups: dict[int, list] = defaultdict(list)  # equal frame counts batch together
                for item, clip in ready:
                    groups[len(clip)].append((item, clip))
                for group in groups.values():
                    replies = answerer([f for _, f in group], [mcq_prompt(i.question, i.options) for i, _ in group])
                    rows += [_prediction(item, reply) for (item, _), reply in zip(group, replies)]
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
    lines.append(f"errors (missing/unreadable video): {summary['errors']}; unparsed replies: {summary['unparsed']}")
    return "\n".join(lines)
