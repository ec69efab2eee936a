"""The toy temporal world of the end-to-end reproduction: clips, ground truth, and questions.

A clip shows 3-4 objects (distinct colours) one after another, each moving one way. Its ground
truth is known frame by frame, so multiple-choice questions with known answers can be asked:

- ``temporal order``: what appears right after / right before an object, first, last — the
  options are the clip's own objects, so only the order tells them apart;
- ``attribute``: which way an object moves (one object's frames suffice);
- ``counting``: how many objects appear.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tpo.synthetic.world import COLOURS, MOTIONS, SHAPES, Event, random_events, render_frames, write_video

TEMPORAL = "temporal order"


def name(event: Event) -> str:
    return f"the {event.colour} {event.shape}"


def frame_captions(events: list[Event], frames_per_event: int) -> list[str]:
    """The ground-truth caption of every frame."""
    return [f"{name(e)} moves {e.motion}".capitalize() for e in events for _ in range(frames_per_event)]


def answer_text(option: str) -> str:
    """How the toy base model is taught to reply: the option's text as a sentence ("The blue circle.")."""
    return option[0].upper() + option[1:] + "."


def _mcq(question: str, answer: str, distractors: list[str], category: str, rng: random.Random) -> dict:
    options = [answer] + [d for d in dict.fromkeys(distractors) if d != answer][:3]
    rng.shuffle(options)
    return {"question": question, "options": options, "answer": options.index(answer), "category": category}


def questions(events: list[Event], rng: random.Random) -> list[dict]:
    """One question of each kind about a clip (temporal ones first)."""
    names = [name(e) for e in events]
    used = {e.colour for e in events}
    others = [f"the {c} {s}" for c in COLOURS for s in SHAPES if c not in used]  # told apart by colour
    rng.shuffle(others)
    i = rng.randrange(len(events) - 1)
    j = rng.randrange(1, len(events))
    moving = rng.choice(events)
    return [
        _mcq(f"What appears right after {names[i]}?", names[i + 1], names[:i + 1][::-1] + names[i + 2:] + others,
             TEMPORAL, rng),
        _mcq(f"What appears right before {names[j]}?", names[j - 1], names[j:] + names[:j - 1] + others, TEMPORAL, rng),
        _mcq("What appears first in the video?", names[0], names[1:] + others, TEMPORAL, rng),
        _mcq("What appears last in the video?", names[-1], names[:-1][::-1] + others, TEMPORAL, rng),
        _mcq(f"Which way does {name(moving)} move?", moving.motion, list(MOTIONS), "attribute", rng),
        _mcq("How many objects appear in the video?", str(len(events)), ["2", "3", "4", "5"], "counting", rng),
    ]


def write_toy_split(root: str | Path, num_videos: int, seed: int, frames_per_event: int = 8,
                    events_per_clip: tuple[int, ...] = (3, 4), size: int = 64) -> Path:
    """Clips under ``root/videos`` and their questions as a ``jsonl`` benchmark ``root/mcq.jsonl``."""
    rng = random.Random(seed)
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for v in range(num_videos):
        events = random_events(rng, rng.choice(events_per_clip))
        video = f"videos/toy_{seed}_{v:04d}.mp4"
        write_video(root / video, render_frames(events, frames_per_event, size))
        for k, q in enumerate(questions(events, rng)):
            rows.append({"id": f"toy_{seed}_{v:04d}_q{k}", "video": video, **q,
                         "meta": {"events": [vars(e) for e in events], "frames_per_event": frames_per_event}})
    path = root / "mcq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
