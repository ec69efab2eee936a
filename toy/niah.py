"""Toy haystacks for the paper's needle-in-a-haystack grid (Fig. 5) in the toy world.

A haystack is a clip of ``length`` objects; the *needle* is the one object of its colour, at
``depth`` (0 = first, 1 = last; a short haystack has fewer places than depths, so two depths can
share one). The question is a moment question about its hand-over ("What appears right after the
red square?", or right before it when it is last), whose options are the neighbour and three other
colours, so an answer about another moment is wrong. Every object is shown in
``FRAMES_PER_OBJECT`` frames, as in a long clip, so a longer haystack is also a longer input; the
default lengths stay within the 32 frames the base model is trained on. Items carry
``meta.length`` (frames shown) and ``meta.depth``, which ``tpo.evaluate.niah.niah_grid`` reads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from toy.world import FRAMES_PER_EVENT, SHAPE_OF, after_question, before_question, shown_frames, write_clip
from tpo.data.frames import uniform_frame_indices
from tpo.evaluate.niah import needle_position, niah_cells
from tpo.synthetic.world import MOTIONS, PALETTE, Event


def haystack(rng: random.Random, length: int, depth: float) -> tuple[list[Event], int]:
    """``length`` objects, one of them (at ``depth``) the only one of its colour; the others use the
    remaining colours, never the same colour twice in a row."""
    needle_colour, *colours = rng.sample(list(PALETTE), len(PALETTE))
    events, position = [], needle_position(length, depth)
    for k in range(length):
        if k == position:
            colour = needle_colour
        else:
            colour = rng.choice([c for c in colours if not events or c != events[-1].colour])
        events.append(Event(colour, SHAPE_OF[colour], rng.choice(list(MOTIONS))))
    return events, position


def write_toy_niah(root: str | Path, lengths=(2, 4, 6, 8), depths=(0.0, 0.25, 0.5, 0.75, 1.0), per_cell: int = 8,
                   seed: int = 20_000) -> Path:
    """Haystack clips under ``root/videos`` and ``root/niah.jsonl``; return the JSONL path."""
    rng = random.Random(seed)
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for length, depth, _, video in niah_cells(lengths, depths, per_cell):
        events, position = haystack(rng, length, depth)
        indices = uniform_frame_indices(FRAMES_PER_EVENT * length, shown_frames(events))
        write_clip(root / video, events)
        colours = [e.colour for e in events]
        question = (after_question(colours, position, rng) if position < length - 1
                    else before_question(colours, position, rng))
        rows.append({"id": Path(video).stem, "video": video, **question,
                     "frame_indices": indices, "duration": f"depth {depth:g}",
                     "meta": {"length": len(indices), "depth": depth}})
    path = root / "niah.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
