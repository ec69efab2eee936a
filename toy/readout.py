"""What the toy experiment reads off a model's predictions on a split.

Moment questions are split by kind (after/before, motion), each next to its *floor*: the accuracy
of a model that knows the clip's colours and first/last but nothing about the moment
(``toy.world.moment_floor``, stored per question in ``meta.floor``). ``others`` pools the order and
counting questions: what TPO should not lose.
"""

from __future__ import annotations

from toy.world import MOMENT


def moment_kind(question: str) -> str:
    return "motion" if question.startswith("Which way") else "after_before"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def readout(rows: list[dict], questions: dict[str, str]) -> dict:
    """Accuracies (0..1) from predictions ``rows``; ``questions`` maps an id to its question text.
    A row with a read error counts as wrong (none is expected on the toy's own videos)."""
    moment = [r for r in rows if r["category"] == MOMENT]
    kinds = {k: [r for r in moment if moment_kind(questions[r["id"]]) == k] for k in ("after_before", "motion")}
    out = {"moment": _mean([r["correct"] for r in moment]),
           "others": _mean([r["correct"] for r in rows if r["category"] != MOMENT]),
           "questions": len(rows)}
    for kind, group in kinds.items():
        out[kind] = _mean([r["correct"] for r in group])
        out[f"{kind}_floor"] = _mean([r["meta"]["floor"] for r in group])
    for category in ("order", "counting"):
        out[category] = _mean([r["correct"] for r in rows if r["category"] == category])
    return out
