"""The toy world of the end-to-end reproduction: long clips, moments in them, and questions.

A *long clip* shows all eight colours of the palette once each, in a random order, each object
still and large in the frame's centre for ``FRAMES_PER_EVENT`` video frames. An object's shape
follows from its colour (``SHAPE_OF``), so its name ("the red square") is known from its colour
alone. In an object's last ``ENTERING_FRAMES`` video frames the next object *enters*: drawn at half
the size inside it, in its own colour and shape, so that each of the toy model's 2x2 visual tokens
of that frame shows both (issue 31: with moving objects a quarter this size, the base did not learn
to read the hand-over, ``benchmarks/toy_vision_gate.py``). Sampled at ``NUM_FRAMES`` = 32 frames, one object (a *moment*) fills 4 of them — the size
of the paper's relevant window ``S_a`` — and the last of the 4 shows the hand-over. Its ground truth
is known frame by frame, so multiple-choice questions with known answers can be asked:

- ``moment``: about one hand-over — what appears right after / right before an object. The answer
  is in the frame where the two objects are seen together, so finding that frame answers it in one
  look (issue 31: the lookup "find X, then look one object on" of the earlier world was learnt too
  slowly by a small model, ``benchmarks/toy_moment_gate.py``);
- ``order``: what appears first, last (the whole clip).

Every object is in every long clip, so an object option is never excluded by "it is not in the
clip": an answer about the wrong moment is in form and wrong. No option list gives its answer
away (``tests/test_toy.py`` checks position and value): object distractors are drawn at random
from the other objects. The one thing the clip itself excludes is the first object as what comes
*after* (the last as what comes *before*); :func:`moment_floor` is the accuracy of knowing only that.

``write_toy_split`` writes long clips and their questions, and, for every moment question, the
same question on a *window* clip of the ``WINDOW_OBJECTS`` objects around the moment (the kind of
clip the base model is taught moments on): its accuracy there is what it could reach if it found
the moment.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from tpo.synthetic.world import MOTIONS, PALETTE, SHAPES, Event, random_events, write_video

MOMENT = "moment"
COLOURS = tuple(PALETTE)
FRAMES_PER_EVENT = 8  # video frames per object; a long clip is 64 frames at 8 fps
NUM_FRAMES = 32  # frames the toy model sees of a long clip, in data generation, training and evaluation
FRAMES_PER_OBJECT = 4  # sampled frames per object at NUM_FRAMES; short and window clips are shown as densely
WINDOW_OBJECTS = 4  # objects of a window clip (and of the base model's short clips at most)
ENTERING_FRAMES = 2  # video frames at an object's end that show the next one entering (the last sampled one)
SHAPE_OF = {c: SHAPES[k % 2] for k, c in enumerate(COLOURS)}
OBJECT_RADIUS, ENTERING_RADIUS = 25, 12  # half-widths in pixels of a 64-pixel frame
BACKGROUND = 16  # the grey level of tpo.synthetic.world's frames


def name(colour: str) -> str:
    return f"the {colour} {SHAPE_OF[colour]}"


def long_events(rng: random.Random) -> list[Event]:
    """The eight colours in a random order, each moving a random way."""
    return [Event(c, SHAPE_OF[c], rng.choice(list(MOTIONS))) for c in rng.sample(COLOURS, len(COLOURS))]


def short_events(rng: random.Random, count: int) -> list[Event]:
    """``count`` objects of distinct colours, each in its colour's shape."""
    return random_events(rng, count, COLOURS, SHAPE_OF)


def shown_frames(events: list[Event]) -> int:
    """How many frames a clip of ``events`` is shown in: ``FRAMES_PER_OBJECT`` per object."""
    return FRAMES_PER_OBJECT * len(events)


def describe(events: list[Event]) -> str:
    text = ", then ".join(name(e.colour) for e in events)
    return text[0].upper() + text[1:] + "."


def reply(index: int, option: str) -> str:
    """How the toy base model is taught to answer, and so what likelihood scoring scores for option
    ``index``: the option's text in the words of a clip's description ("The blue square."). Not the
    letter: a model this small learns which object is meant long before it learns which letter
    lists it, and an answer worded like the description reuses what describing the clip taught it."""
    return option[0].upper() + option[1:] + "."


def is_reply(text: str) -> bool:
    """Whether ``text`` is in the toy's answer form (an object, as :func:`reply` writes it) rather
    than, say, a description of the clip."""
    return text in {reply(0, name(c)) for c in COLOURS}


def answer_text(question: dict) -> str:
    return reply(question["answer"], question["options"][question["answer"]])


def mcq(question: str, answer: str, distractors: list[str], category: str, rng: random.Random) -> dict:
    options = [answer] + distractors[:3]
    rng.shuffle(options)
    return {"question": question, "options": options, "answer": options.index(answer), "category": category}


def colour_distractors(answer: str, named: str | None, rng: random.Random, seen: list[str] = ()) -> list[str]:
    """Three colours other than the answer and the one the question names: first those ``seen`` in
    the clip, then the rest of the palette, each group in random order. In a long clip every colour
    is seen, so they are three random others."""
    first = [c for c in dict.fromkeys(seen) if c not in (answer, named)]
    rest = [c for c in COLOURS if c not in (answer, named) and c not in first]
    rng.shuffle(first)
    rng.shuffle(rest)
    return (first + rest)[:3]


def _object_mcq(question: str, answer: str, distractors: list[str], category: str, rng: random.Random) -> dict:
    return mcq(question, name(answer), [name(c) for c in distractors], category, rng)


def after_question(colours: list[str], i: int, rng: random.Random) -> dict:
    return _object_mcq(f"What appears right after {name(colours[i])}?", colours[i + 1],
                       colour_distractors(colours[i + 1], colours[i], rng, colours), MOMENT, rng)


def before_question(colours: list[str], i: int, rng: random.Random) -> dict:
    return _object_mcq(f"What appears right before {name(colours[i])}?", colours[i - 1],
                       colour_distractors(colours[i - 1], colours[i], rng, colours), MOMENT, rng)


def moment_questions(events: list[Event], rng: random.Random) -> list[tuple[dict, list[int]]]:
    """One question of each moment kind (after, before), with the objects (indices) its hand-over holds."""
    colours, n = [e.colour for e in events], len(events)
    i, j = rng.randrange(n - 1), rng.randrange(1, n)
    return [(after_question(colours, i, rng), [i, i + 1]), (before_question(colours, j, rng), [j - 1, j])]


def clip_questions(events: list[Event], rng: random.Random) -> list[dict]:
    """Questions about the whole clip: what appears first, last."""
    colours = [e.colour for e in events]
    return [
        _object_mcq("What appears first?", colours[0], colour_distractors(colours[0], None, rng), "order", rng),
        _object_mcq("What appears last?", colours[-1], colour_distractors(colours[-1], None, rng), "order", rng),
    ]


def moment_floor(question: dict, events: list[Event]) -> float:
    """The chance of a moment question for a model that knows the clip's first and last object and
    nothing about the moment: it rules out the first object as what comes after, the last as what
    comes before, and picks at random among the rest."""
    options, text = question["options"], question["question"]
    ruled_out = name(events[0].colour) if "after" in text else name(events[-1].colour)
    return 1 / sum(o != ruled_out for o in options)


def window_of(held: list[int], num_events: int) -> list[int]:
    """The ``WINDOW_OBJECTS`` consecutive objects around a moment's objects ``held``."""
    start = min(max(min(held) - 1, 0), num_events - WINDOW_OBJECTS)
    return list(range(start, start + WINDOW_OBJECTS))


def render(events: list[Event], size: int = 64) -> np.ndarray:
    """A clip's frames: each object centred (``OBJECT_RADIUS``), and in its last ``ENTERING_FRAMES``
    the next one centred inside it (``ENTERING_RADIUS``)."""
    frames = np.full((len(events) * FRAMES_PER_EVENT, size, size, 3), BACKGROUND, dtype=np.uint8)
    for i, event in enumerate(events):
        for j in range(FRAMES_PER_EVENT):
            frame = frames[i * FRAMES_PER_EVENT + j]
            draw_shape(frame, event, size // 2, size // 2, size * OBJECT_RADIUS // 64)
            if i + 1 < len(events) and j >= FRAMES_PER_EVENT - ENTERING_FRAMES:
                draw_shape(frame, events[i + 1], size // 2, size // 2, size * ENTERING_RADIUS // 64)
    return frames


def draw_shape(frame: np.ndarray, event: Event, cx: int, cy: int, radius: int) -> None:
    ys, xs = np.ogrid[:frame.shape[0], :frame.shape[1]]
    if event.shape == "square":
        mask = (abs(xs - cx) <= radius) & (abs(ys - cy) <= radius)
    else:
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius * radius
    frame[mask] = PALETTE[event.colour]


def write_clip(path: Path, events: list[Event], size: int = 64) -> None:
    write_video(path, render(events, size))


def write_toy_split(root: str | Path, num_videos: int, seed: int) -> Path:
    """Long clips under ``root/videos`` and their questions as a ``jsonl`` benchmark ``root/mcq.jsonl``;
    the moment questions again on window clips (``root/windows``) as ``root/window.jsonl``."""
    rng = random.Random(seed)
    root = Path(root)
    for sub in ("videos", "windows"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows, windows = [], []
    for v in range(num_videos):
        events = long_events(rng)
        stem = f"toy_{seed}_{v:04d}"
        write_clip(root / "videos" / f"{stem}.mp4", events)
        meta = {"events": [vars(e) for e in events], "clip": stem}
        moments = moment_questions(events, rng)
        for k, q in enumerate([q for q, _ in moments] + clip_questions(events, rng)):
            floor = moment_floor(q, events) if q["category"] == MOMENT else 1 / len(q["options"])
            rows.append({"id": f"{stem}_q{k}", "video": f"videos/{stem}.mp4", **q, "meta": {**meta, "floor": floor}})
        for k, (q, held) in enumerate(moments):
            window = window_of(held, len(events))
            path = f"windows/{stem}_q{k}.mp4"
            write_clip(root / path, [events[i] for i in window])
            windows.append({"id": f"{stem}_q{k}", "video": path, **q, "meta": {**meta, "window": window}})
    (root / "window.jsonl").write_text("".join(json.dumps(r) + "\n" for r in windows))
    path = root / "mcq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
