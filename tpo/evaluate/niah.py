"""Video needle-in-a-haystack (paper, Fig. 5): a rendered needle frame inside a long haystack.

``make_niah`` writes haystack videos of the synthetic world, each with one *needle* frame (a
word, a number or a colour patch, drawn large) at a chosen depth, and a multiple-choice
question about the needle, as a ``jsonl`` benchmark whose items show the model every frame.
``niah_grid`` turns the predictions into accuracy over (haystack length x depth), and
``plot_heatmap`` draws it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from tpo.synthetic.world import COLOURS, random_events, render_frames, write_video

WORDS = ("apple", "river", "planet", "guitar", "candle", "rocket", "garden", "pencil")
NUMBERS = tuple(str(n) for n in (17, 28, 39, 46, 53, 64, 75, 82))
QUESTIONS = {
    "word": ("Which word is written on the card shown in the video?", WORDS),
    "number": ("Which number is written on the card shown in the video?", NUMBERS),
    "colour": ("What colour is the large card shown in the video?", tuple(COLOURS)),
}


def render_needle(kind: str, value: str, size: int) -> np.ndarray:
    """A full frame: a white card with ``value`` written on it, or a card of colour ``value``."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (size, size), (16, 16, 16))
    draw = ImageDraw.Draw(image)
    margin = size // 10
    fill = COLOURS[value] if kind == "colour" else (250, 250, 250)
    draw.rectangle([margin, margin, size - margin, size - margin], fill=fill)
    if kind != "colour":
        font = ImageFont.load_default(size=max(10, min(size // 3, int(1.6 * (size - 2 * margin) / len(value)))))
        draw.text((size / 2, size / 2), value, fill=(0, 0, 0), font=font, anchor="mm")
    return np.asarray(image)


def needle_position(length: int, depth: float) -> int:
    """The frame the needle replaces: ``depth`` 0 = first frame, 1 = last."""
    return round(depth * (length - 1))


def niah_cells(lengths, depths, per_cell: int):
    """``(length, depth, k, video name)`` of every haystack of a (length x depth) grid, ``per_cell`` each."""
    for length in lengths:
        for depth in depths:
            for k in range(per_cell):
                yield length, depth, k, f"videos/niah_L{length}_d{round(100 * depth):03d}_{k}.mp4"


def make_niah(out: str | Path, lengths=(8, 16, 32), depths=(0.0, 0.25, 0.5, 0.75, 1.0), per_cell: int = 2,
              seed: int = 0, size: int = 96) -> Path:
    """Write ``out/videos/*.mp4`` and ``out/niah.jsonl``; return the JSONL path."""
    rng = random.Random(seed)
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    items = []
    for length, depth, _, name in niah_cells(lengths, depths, per_cell):
        kind = rng.choice(sorted(QUESTIONS))
        question, pool = QUESTIONS[kind]
        options = rng.sample(pool, 4)
        answer = rng.randrange(4)
        frames = render_frames(random_events(rng, 4), -(-length // 4), size)[:length]
        position = needle_position(length, depth)
        frames[position] = render_needle(kind, options[answer], size)
        write_video(out / name, frames)
        items.append({"id": Path(name).stem, "video": name, "question": question, "options": options,
                      "answer": answer, "category": f"length {length}", "duration": f"depth {depth:g}",
                      "frame_indices": list(range(length)),
                      "meta": {"length": length, "depth": depth, "needle_frame": position, "kind": kind}})
    path = out / "niah.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def niah_grid(predictions: list[dict]) -> dict:
    """``{"lengths": [...], "depths": [...], "accuracy": [[...] per length]}`` (None: no item)."""
    cells: dict = {}
    for row in predictions:
        if row.get("error") is None and "meta" in row:
            key = (row["meta"]["length"], row["meta"]["depth"])
            cells.setdefault(key, []).append(row["correct"])
    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells})
    grid = [[(sum(cells[(n, d)]) / len(cells[(n, d)])) if (n, d) in cells else None for d in depths] for n in lengths]
    return {"lengths": lengths, "depths": depths, "accuracy": grid}


def _percent(rows: list[dict]) -> str:
    return f"{100 * sum(r['correct'] for r in rows) / len(rows):>7.1f}" if rows else f"{'-':>7}"


def niah_table(predictions: list[dict], summary: dict, title: str) -> str:
    """The heatmap as text: accuracy (%) per haystack length (rows, shortest first) and needle depth
    (columns), each length's and each depth's over all its items, and the items that errored."""
    answered = [r for r in predictions if r.get("error") is None and "meta" in r]
    grid = niah_grid(answered)

    def cell(length=None, depth=None) -> str:
        return _percent([r for r in answered if length in (None, r["meta"]["length"])
                         and depth in (None, r["meta"]["depth"])])

    lines = [title, "accuracy (%) by haystack length (frames) and needle depth",
             f"{'frames':>7}" + "".join(f"{f'{100 * d:.0f}%':>7}" for d in grid["depths"]) + f"{'all':>7}"]
    for length in grid["lengths"]:
        lines.append(f"{length:>7}" + "".join(cell(length, d) for d in grid["depths"]) + cell(length))
    lines.append(f"{'all':>7}" + "".join(cell(depth=d) for d in grid["depths"]) + cell())
    lines.append(f"{len(answered)} items scored; errors (missing/unreadable video): {summary['errors']}; "
                 f"unparsed replies: {summary['unparsed']}")
    return "\n".join(lines)


def plot_heatmap(grid: dict, path: str | Path, title: str = "Needle in a video haystack") -> Path:
    """Accuracy per (haystack length, needle depth), red (0) to green (1), like the paper's Fig. 5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array([[np.nan if v is None else v for v in row] for row in grid["accuracy"]], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(grid["depths"]), 1.2 + 0.6 * len(grid["lengths"])))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(grid["depths"])), [f"{100 * d:.0f}%" for d in grid["depths"]])
    ax.set_yticks(range(len(grid["lengths"])), [str(n) for n in grid["lengths"]])
    ax.set_xlabel("needle depth")
    ax.set_ylabel("haystack frames")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
