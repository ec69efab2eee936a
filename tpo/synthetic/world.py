"""A synthetic world of real video files: coloured shapes that move one after another.

Each clip is a sequence of *events* ("the red square moves left"), one per equal-length
segment of the clip, written with PyAV and read back with decord like any other video.
``write_preference_dataset`` turns clips into TPO preference records whose chosen answers
describe the frames the question is about and whose rejected answers describe other frames:
the same contrast the real pipeline builds with its irrelevant / incomplete manipulations.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from tpo.data.frames import uniform_frame_indices
from tpo.data.records import PreferenceRecord

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (240, 220, 40)}
# every colour an object can be drawn in and recognised by: the demo's four and four more for longer clips
PALETTE = {**COLOURS, "magenta": (220, 50, 220), "cyan": (40, 220, 230), "orange": (245, 140, 30),
           "white": (240, 240, 240)}
SHAPES = ("square", "circle")
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")


@dataclass(frozen=True)
class Event:
    colour: str
    shape: str
    motion: str

    def describe(self) -> str:
        return f"the {self.colour} {self.shape} moves {self.motion}"


def _sentences() -> list[str]:
    events = [Event(c, s, m).describe() for c in COLOURS for s in SHAPES for m in MOTIONS]
    questions = [
        "What happens after {e}?", "What happens before {e}?", "What happens in the {o} part of the video?",
        "In what order do things happen in the video?", "What happens at the start of the video?",
        "What happens at the end of the video?",
    ]
    text = [q.format(e=e, o=o) for q in questions for e in events[:4] for o in ORDINALS]
    text += [f"{e.capitalize()}, then {f}." for e in events for f in events[::5]]
    return text


CORPUS = _sentences()  # what the tiny tokenizers are trained on


def _draw(frame: np.ndarray, event: Event, progress: float, radius: int) -> None:
    """Draw the event's shape at ``progress`` (0..1) along its motion path."""
    h, w, _ = frame.shape
    r = radius
    dx, dy = MOTIONS[event.motion]
    cx = int(w / 2 + dx * (progress - 0.5) * (w / 2))
    cy = int(h / 2 + dy * (progress - 0.5) * (h / 2))
    ys, xs = np.ogrid[:h, :w]
    if event.shape == "square":
        mask = (abs(xs - cx) <= r) & (abs(ys - cy) <= r)
    else:
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    frame[mask] = PALETTE[event.colour]


def render_frames(events: list[Event], frames_per_event: int, size: int = 64, radius: int | None = None) -> np.ndarray:
    """``(len(events) * frames_per_event, size, size, 3)`` uint8 frames, one segment per event; the
    shapes' half-width is ``radius`` pixels (default ``size // 8``)."""
    frames = np.full((len(events) * frames_per_event, size, size, 3), 16, dtype=np.uint8)
    for i, event in enumerate(events):
        for j in range(frames_per_event):
            _draw(frames[i * frames_per_event + j], event, j / max(frames_per_event - 1, 1), radius or size // 8)
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, faststart: bool = False) -> None:
    """Write uint8 RGB frames ``(T, H, W, 3)`` as an MPEG-4 file with PyAV (``faststart``: index first)."""
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def random_events(rng: random.Random, count: int, colours=tuple(COLOURS), shape_of: dict | None = None) -> list[Event]:
    """``count`` events of distinct ``colours`` (the demo's 4 by default): a question about one event
    is unambiguous and a tiny model can tell the events apart by colour alone. Each colour's shape is
    ``shape_of[colour]`` when given, else drawn."""
    return [Event(c, shape_of[c] if shape_of else rng.choice(SHAPES), rng.choice(list(MOTIONS)))
            for c in rng.sample(list(colours), count)]


def write_clips(root: str | Path, num_videos: int, events_per_video: int = 4, frames_per_event: int = 16,
                seed: int = 0, size: int = 64) -> list[Path]:
    """Raw clips for the data pipeline, ``root/clip_<i>.mp4`` (one event per segment), and a
    multiple-choice benchmark about them, ``root/mcq.jsonl`` (``tpo evaluate mcq --benchmark jsonl``):
    what happens in each part of each clip, the clip's events as the options."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths, items = [], []
    for v in range(num_videos):
        events = random_events(rng, events_per_video)
        paths.append(root / f"clip_{v:04d}.mp4")
        write_video(paths[-1], render_frames(events, frames_per_event, size))
        options = [_sentence([e]) for e in events]
        items += [{"id": f"clip_{v:04d}_{i}", "video": paths[-1].name, "options": options, "answer": i,
                   "question": f"What happens in the {ORDINALS[i]} part of the video?", "category": "part"}
                  for i in range(len(events))]
    (root / "mcq.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return paths


def _sentence(events: list[Event]) -> str:
    text = ", then ".join(e.describe() for e in events)
    return text[0].upper() + text[1:] + "."


def _pair_for_segment(events, seg, rng):
    """An *irrelevant* pair: a question about segment ``seg``; rejected describes another segment."""
    other = rng.choice([i for i in range(len(events)) if events[i] != events[seg]])
    kind = rng.choice(["after", "before", "ordinal"] if 0 < seg < len(events) - 1 else ["ordinal"])
    if kind == "after":
        question = f"What happens after {events[seg - 1].describe()}?"
    elif kind == "before":
        question = f"What happens before {events[seg + 1].describe()}?"
    else:
        question = f"What happens in the {ORDINALS[seg]} part of the video?"
    return question, _sentence([events[seg]]), _sentence([events[other]])


def write_preference_dataset(
    root: str | Path, num_videos: int = 12, events_per_video: int = 4, frames_per_event: int = 8,
    num_frames: int = 16, pairs_per_video: int = 4, seed: int = 0, size: int = 64,
) -> Path:
    """Write clips under ``root/videos`` and ``root/preferences.jsonl``; return the JSONL path.

    Half the pairs of each video are *irrelevant* (``S_a`` = one event's frames, ``S_b`` = the
    rest) and half *incomplete* (``S_a`` = all frames, ``S_b`` = every other frame, whose answer
    misses events).
    """
    rng = random.Random(seed)
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    records = []
    for v in range(num_videos):
        events = random_events(rng, events_per_video)
        name = f"videos/clip_{v:04d}.mp4"
        write_video(root / name, render_frames(events, frames_per_event, size))
        indices = uniform_frame_indices(events_per_video * frames_per_event, num_frames)
        per_event = num_frames // events_per_video
        for p in range(pairs_per_video):
            if p % 2 == 0:
                seg = rng.randrange(events_per_video)
                question, chosen, rejected = _pair_for_segment(events, seg, rng)
                s_a = indices[seg * per_event:(seg + 1) * per_event]
                s_b = [i for i in indices if i not in s_a]
                manipulation, qtype = "irrelevant", "temporal order"
            else:
                kept = sorted(rng.sample(range(events_per_video), max(1, events_per_video // 2)))
                question = "In what order do things happen in the video?"
                chosen, rejected = _sentence(events), _sentence([events[i] for i in kept])
                s_a, s_b = indices, indices[::2]
                manipulation, qtype = "incomplete", "temporal order"
            records.append(PreferenceRecord(
                id=f"clip_{v:04d}-{p}", video=name, frame_indices=indices, question=question, chosen=chosen,
                rejected=rejected, manipulation=manipulation, chosen_frames=s_a, rejected_frames=s_b,
                question_type=qtype,
                captions=[{"frame": i, "text": events[min(i // frames_per_event, len(events) - 1)].describe()}
                          for i in s_a],
                filter={"kept": True, "reason": "synthetic ground truth", "judge": "none"},
                provenance={"source": "tpo.synthetic.world", "seed": seed}))
    path = root / "preferences.jsonl"
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    return path


def find_object(image: np.ndarray) -> tuple[str, np.ndarray] | None:
    """The colour of the one bright object in a synthetic-world frame and its ``(H, W)`` pixel mask."""
    pixels = image.reshape(-1, 3).astype(float)
    bright = pixels.max(axis=1) > 80
    if bright.sum() < 4:
        return None
    mean = pixels[bright].mean(axis=0)
    colour = min(PALETTE, key=lambda c: float(np.sum((np.array(PALETTE[c]) - mean) ** 2)))
    return colour, bright.reshape(image.shape[:2])


def place(mask: np.ndarray) -> str:
    """Where a mask's pixels are: "top left" ... "bottom right"."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    horizontal = "left" if xs.mean() < w * 0.4 else "right" if xs.mean() > w * 0.6 else "centre"
    vertical = "top" if ys.mean() < h * 0.4 else "bottom" if ys.mean() > h * 0.6 else "middle"
    return f"{vertical} {horizontal}"
