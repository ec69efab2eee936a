"""What the toy experiment reads off a model's predictions on a split.

Moment questions are split by kind (after, before), each next to its *floor*: the accuracy of a
model that knows the clip's colours and first/last but nothing about the moment
(``toy.world.moment_floor``, stored per question in ``meta.floor``). ``order`` (what appears first,
last) is what TPO should not lose.
"""

from __future__ import annotations

from toy.world import MOMENT

MOMENT_KINDS = ("after", "before")


def moment_kind(question: str) -> str:
    return "after" if "right after" in question else "before"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def readout(rows: list[dict], questions: dict[str, str]) -> dict:
    """Accuracies (0..1) from predictions ``rows``; ``questions`` maps an id to its question text.
    A row with a read error counts as wrong (none is expected on the toy's own videos)."""
    moment = [r for r in rows if r["category"] == MOMENT]
    out = {"moment": _mean([r["correct"] for r in moment]), "moment_floor": _floor(moment),
           "order": _mean([r["correct"] for r in rows if r["category"] == "order"]), "questions": len(rows)}
    for kind in MOMENT_KINDS:
        group = [r for r in moment if moment_kind(questions[r["id"]]) == kind]
        out[kind] = _mean([r["correct"] for r in group])
        out[f"{kind}_floor"] = _floor(group)
    return out


def _floor(rows: list[dict]) -> float:
    """The mean floor of long-clip questions (window clips have none: nan)."""
    return _mean([r["meta"]["floor"] for r in rows if "floor" in r["meta"]])
