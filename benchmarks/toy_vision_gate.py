"""The gate of issue 31 with the vision tower in: does the toy base learn the hand-over from pixels?

``benchmarks/toy_moment_gate.py`` showed that the language model alone learns "what appears right
after / before X" in a few hundred steps when the frame where X hands over to the next object holds
both cleanly. The real base (``toy.base``) stays at 70–78 % on window clips, so reading the hand-over
frame from pixels is the open question. This gate trains the real toy base (``toy.base``'s model
and training loop) on *short clips only* (one to four objects, described, and with three or more
asked after / before) for ``--steps`` steps, then reads by likelihood, as the reproduction does:

- *window*: 200 moment questions on the 4-object window clips of held-out long clips;
- *long*: 200 moment questions on the long clips themselves (never trained on: secondary).

``--drawing`` picks how the hand-over frame is drawn (the last ``ENTERING_FRAMES`` video frames of
each object):

- ``inside``: the world before 2026-12-08, moving objects, the next one small inside the current one;
- ``side``: the current object on the left half, the next one on the right half, both at full size
  (after the model's 2x2 pooling each visual token then shows one object only);
- ``centred``: ``toy.world.render`` since 2026-12-08, every object still and large in the centre, the
  next one entering inside it at half the size (each of the 2x2 visual tokens then shows both, as one
  symbolic position holds both in the hand-over gate).

``--vision-layers`` / ``--vision-width`` size the vision tower (the base has 1 layer, 64 wide),
``--patch 16`` leaves one visual token per frame (the base has 2x2), and
``--mix questions`` trains only the after / before rows once the describe-only steps are over (the
base's mix keeps the descriptions, which carry most tokens). Both replace ``toy.base``'s functions
for this process only.

    python benchmarks/toy_vision_gate.py --drawing side --steps 500

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import toy.base  # noqa: E402
import toy.world  # noqa: E402
from toy.base import FAMILY, ToyBaseConfig, build_toy_model, train_toy_base  # noqa: E402
from toy.world import (ENTERING_FRAMES, FRAMES_PER_EVENT, draw_shape, long_events, moment_questions,  # noqa: E402
                       reply, shown_frames, window_of)
from tpo.data.frames import read_clip, uniform_frame_indices  # noqa: E402
from tpo.evaluate.answers import mcq_prompt  # noqa: E402
from tpo.evaluate.likelihood import LikelihoodScorer  # noqa: E402
from tpo.models import get_adapter  # noqa: E402
from tpo.synthetic.world import MOTIONS, render_frames, write_video  # noqa: E402

EVAL_SEED = 12345  # held-out clips: not a seed any base or split draws from
QUESTIONS = 200


def centre(event, progress: float, size: int) -> tuple[int, int]:
    """Where ``render_frames`` draws a moving ``event`` at ``progress`` (0..1) of its path."""
    dx, dy = MOTIONS[event.motion]
    return int(size / 2 + dx * (progress - 0.5) * (size / 2)), int(size / 2 + dy * (progress - 0.5) * (size / 2))


def render_inside(events, size: int = 64) -> np.ndarray:
    """``inside``: the world before 2026-12-08, objects a fifth of the frame moving one way, the next
    one entering small (3/5 the size) inside."""
    radius = size // 5
    frames = render_frames(events, FRAMES_PER_EVENT, size, radius=radius)
    for i, (current, entering) in enumerate(zip(events, events[1:])):
        for j in range(FRAMES_PER_EVENT - ENTERING_FRAMES, FRAMES_PER_EVENT):
            cx, cy = centre(current, j / (FRAMES_PER_EVENT - 1), size)
            draw_shape(frames[i * FRAMES_PER_EVENT + j], entering, cx, cy, radius * 3 // 5)
    return frames


def render_side(events, size: int = 64) -> np.ndarray:
    """``side``: in an object's last ``ENTERING_FRAMES`` frames, it on the left and the next on the right."""
    radius = size // 5
    frames = render_frames(events, FRAMES_PER_EVENT, size, radius=radius)
    for i, (current, entering) in enumerate(zip(events, events[1:])):
        for j in range(FRAMES_PER_EVENT - ENTERING_FRAMES, FRAMES_PER_EVENT):
            frame = frames[i * FRAMES_PER_EVENT + j]
            frame[:] = 16
            draw_shape(frame, current, size // 4, size // 2, radius)
            draw_shape(frame, entering, 3 * size // 4, size // 2, radius)
    return frames


DRAWINGS = {"inside": render_inside, "side": render_side, "centred": toy.world.render}


def sized_model(layers: int, width: int, patch: int):
    """The toy base with another vision tower; ``patch`` 16 makes a 32-pixel frame 2x2 patches, so
    LLaVA-OneVision's 2x2 pooling leaves one visual token per frame (8: 2x2 tokens, the base's)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    def build(cfg: ToyBaseConfig):
        vision = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                      num_attention_heads=max(1, width // 32))
        model, processor = build_toy_model(cfg, vision)
        model.config.vision_config.patch_size = patch
        processor.num_image_tokens = (model.config.vision_config.image_size // patch) ** 2
        torch.manual_seed(cfg.seed)
        return LlavaOnevisionForConditionalGeneration(model.config), processor
    return build


def questions_only(pool):
    def pick(rows, cfg, step):
        rows = pool(rows, cfg, step)
        return rows if step < cfg.describe_steps else [r for r in rows if r["phase"] != "describe"]
    return pick


def held_out(workdir: Path) -> dict[str, list[tuple]]:
    """(clip path, frame count, question) for the window and the long questions."""
    rng = random.Random(EVAL_SEED)
    out = {"window": [], "long": []}
    v = 0
    while min(len(q) for q in out.values()) < QUESTIONS:
        events = long_events(rng)
        long_path = workdir / f"long_{v}.mp4"
        write_video(long_path, toy.world.render(events))
        for k, (q, held) in enumerate(moment_questions(events, rng)):
            window = [events[i] for i in window_of(held, len(events))]
            path = workdir / f"window_{v}_{k}.mp4"
            write_video(path, toy.world.render(window))
            out["window"].append((path, window, q))
            out["long"].append((long_path, events, q))
        v += 1
    return {kind: rows[:QUESTIONS] for kind, rows in out.items()}


def accuracy(model_dir: Path, rows: list[tuple]) -> float:
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(model_dir).eval()
    scorer = LikelihoodScorer(get_adapter(FAMILY), model, AutoProcessor.from_pretrained(model_dir), continuation=reply)
    right = 0
    for path, events, q in rows:
        clip = read_clip(path, uniform_frame_indices(FRAMES_PER_EVENT * len(events), shown_frames(events)))
        scores = scorer.score_options([clip], [mcq_prompt(q["question"], q["options"])], [q["options"]])[0]
        right += int(np.argmax(scores)) == q["answer"]
    return 100 * right / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drawing", choices=sorted(DRAWINGS), default="centred")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--clips", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision-layers", type=int, default=1)
    parser.add_argument("--vision-width", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8, help="16: one visual token per frame")
    parser.add_argument("--mix", choices=("all", "questions"), default="all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if (args.vision_layers, args.vision_width, args.patch) != (1, 64, 8):
        toy.base.build_toy_model = sized_model(args.vision_layers, args.vision_width, args.patch)
    if args.mix == "questions":
        toy.base.training_pool = questions_only(toy.base.training_pool)
    toy.world.render = DRAWINGS[args.drawing]  # write_clip (training) and held_out (reading) draw with it
    cfg = replace(ToyBaseConfig(), num_clips=args.clips, steps=args.steps, long_share=0.0, share_steps=0,
                  seed=args.seed)
    toy.base.build_toy_model(cfg)  # fail early on a bad config
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = held_out(tmp)
        model_dir = train_toy_base(tmp / "base", cfg)
        minutes = (time.time() - start) / 60
        result = {"drawing": args.drawing, "steps": args.steps, "clips": args.clips, "seed": args.seed,
              "vision": [args.vision_layers, args.vision_width, args.patch], "mix": args.mix,
                  "train_minutes": round(minutes, 1),
                  **{kind: round(accuracy(model_dir, r), 1) for kind, r in rows.items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
