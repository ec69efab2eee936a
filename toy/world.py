"""The toy world of the end-to-end reproduction: long clips, moments in them, and questions.

A *long clip* shows 6-8 objects of distinct colours one after another, each moving one way for
``FRAMES_PER_EVENT`` video frames. Sampled at ``NUM_FRAMES`` = 32 frames, one object (a *moment*)
fills about 4 of them — the size of the paper's relevant window ``S_a``. Its ground truth is known
frame by frame, so multiple-choice questions with known answers can be asked:

- ``moment``: about one moment of the long clip — which way an object moves, what appears right
  after / right before it. The options are the clip's own motions or objects, so an answer about
  the wrong moment is in form and wrong;
- ``order``: what appears first, last (the whole clip);
- ``counting``: how many objects appear.

``write_toy_split`` writes held-out long clips and their questions, and, for every moment question,
the same question on a *window* clip that holds only the moment's objects: the base model's accuracy
there is what it could reach if it found the moment.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tpo.synthetic.world import MOTIONS, PALETTE, SHAPES, Event, render_frames, write_video

MOMENT = "moment"
FRAMES_PER_EVENT = 8  # video frames per object; long clips are 48-64 frames at 8 fps
NUM_FRAMES = 32  # frames the toy model sees of a long clip, in data generation, training and evaluation
WINDOW_FRAMES = 4  # frames it sees of a window clip (the size of data_gen's irrelevant window S_a)
LONG_EVENTS = (6, 7, 8)


def random_events(rng: random.Random, count: int) -> list[Event]:
    """``count`` (at most 8) objects of distinct colours: a question names an object by its colour."""
    return [Event(c, rng.choice(SHAPES), rng.choice(list(MOTIONS))) for c in rng.sample(list(PALETTE), count)]


def name(event: Event) -> str:
    return f"the {event.colour} {event.shape}"


def describe(events: list[Event]) -> str:
    text = ", then ".join(f"{name(e)} moves {e.motion}" for e in events)
    return text[0].upper() + text[1:] + "."


def reply(index: int, option: str) -> str:
    """How the toy base model is taught to answer: the option's text as a sentence ("The blue
    circle."), and so what likelihood scoring scores for option ``index``. Not the letter: a model
    this small learns which object is meant long before it learns which letter lists it."""
    return option[0].upper() + option[1:] + "."


def is_reply(text: str) -> bool:
    """Whether ``text`` is in the toy's answer form (an object, a motion or a count, as :func:`reply`
    writes it) rather than, say, a description of the clip."""
    things = [f"the {c} {s}" for c in PALETTE for s in SHAPES] + list(MOTIONS) + [str(n) for n in range(1, 11)]
    return text in {reply(0, t) for t in things}


def answer_text(question: dict) -> str:
    return reply(question["answer"], question["options"][question["answer"]])


def _mcq(question: str, answer: str, distractors: list[str], category: str, rng: random.Random) -> dict:
    options = [answer] + [d for d in dict.fromkeys(distractors) if d != answer][:3]
    rng.shuffle(options)
    return {"question": question, "options": options, "answer": options.index(answer), "category": category}


def _others(events: list[Event], rng: random.Random) -> list[str]:
    used = {e.colour for e in events}
    others = [f"the {c} {s}" for c in PALETTE for s in SHAPES if c not in used]
    rng.shuffle(others)
    return others


def after_question(events: list[Event], i: int, rng: random.Random) -> dict:
    """What appears right after object ``i``: its neighbours first among the distractors."""
    names = [name(e) for e in events]
    near = [names[k] for k in (i, i - 1, i + 2, i + 3) if 0 <= k < len(names)]
    return _mcq(f"What appears right after {names[i]}?", names[i + 1], near + names + _others(events, rng), MOMENT, rng)


def before_question(events: list[Event], i: int, rng: random.Random) -> dict:
    names = [name(e) for e in events]
    near = [names[k] for k in (i, i + 1, i - 2, i - 3) if 0 <= k < len(names)]
    return _mcq(f"What appears right before {names[i]}?", names[i - 1], near + names + _others(events, rng), MOMENT,
                rng)


def motion_question(events: list[Event], i: int, rng: random.Random) -> dict:
    return _mcq(f"Which way does {name(events[i])} move?", events[i].motion, list(MOTIONS), MOMENT, rng)


def moment_questions(events: list[Event], rng: random.Random) -> list[tuple[dict, list[int]]]:
    """One question of each moment kind, with the objects (indices) its moment holds."""
    n = len(events)
    i, j, k = rng.randrange(n - 1), rng.randrange(1, n), rng.randrange(n)
    return [(after_question(events, i, rng), [i, i + 1]), (before_question(events, j, rng), [j - 1, j]),
            (motion_question(events, k, rng), [k])]


def clip_questions(events: list[Event], rng: random.Random) -> list[dict]:
    """Questions about the whole clip: first, last, how many."""
    names = [name(e) for e in events]
    counts = [str(c) for c in range(len(events) - 2, len(events) + 3)]
    return [
        _mcq("What appears first in the video?", names[0], names[1:] + _others(events, rng), "order", rng),
        _mcq("What appears last in the video?", names[-1], names[:-1][::-1] + _others(events, rng), "order", rng),
        _mcq("How many objects appear in the video?", str(len(events)), rng.sample(counts, len(counts)), "counting",
             rng),
    ]


def write_clip(path: Path, events: list[Event], size: int = 64) -> None:
    write_video(path, render_frames(events, FRAMES_PER_EVENT, size))


def write_toy_split(root: str | Path, num_videos: int, seed: int) -> Path:
    """Long clips under ``root/videos`` and their questions as a ``jsonl`` benchmark ``root/mcq.jsonl``;
    the moment questions again on window clips (``root/windows``) as ``root/window.jsonl``."""
    rng = random.Random(seed)
    root = Path(root)
    for sub in ("videos", "windows"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows, windows = [], []
    for v in range(num_videos):
        events = random_events(rng, rng.choice(LONG_EVENTS))
        stem = f"toy_{seed}_{v:04d}"
        write_clip(root / "videos" / f"{stem}.mp4", events)
        meta = {"events": [vars(e) for e in events], "frames_per_event": FRAMES_PER_EVENT}
        moments = moment_questions(events, rng)
        for k, q in enumerate([q for q, _ in moments] + clip_questions(events, rng)):
            rows.append({"id": f"{stem}_q{k}", "video": f"videos/{stem}.mp4", **q, "meta": meta})
        for k, (q, held) in enumerate(moments):
            window = f"windows/{stem}_q{k}.mp4"
            write_clip(root / window, [events[i] for i in held])
            windows.append({"id": f"{stem}_q{k}", "video": window, **q, "meta": {**meta, "window": held}})
    (root / "window.jsonl").write_text("".join(json.dumps(r) + "\n" for r in windows))
    path = root / "mcq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
