"""Evaluation items/s with the next batch's clips decoding while the model answers (``prefetch=1``,
the default) against decoding in turn (``prefetch=0``), measured in the same run.

A tiny random LLaVA-OneVision answers Video-MME-style questions (lmms-eval protocol, 32 frames,
batches of 4, 16 new tokens) on CPU, on real 256x256, 30 fps, 40 s files. On CPU the model uses
every core, so decoding ahead only competes with it (``tpo evaluate`` decodes ahead only when the
model runs on a GPU or a server).

    python benchmarks/eval_prefetch.py            # 16 videos, each setting twice
    python benchmarks/eval_prefetch.py --quick    # 4 videos, once (what the tests run)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from tpo.clean_exit import run_and_exit
from tpo.evaluate.benchmarks import MCQItem
from tpo.evaluate.mcq import evaluate
from tpo.evaluate.model import VideoAnswerer, load_for_eval
from tpo.evaluate.protocol import Protocol
from tpo.synthetic.world import random_events, render_frames, write_video


def _videos(root: Path, count: int, seconds: int) -> list[Path]:
    rng = random.Random(0)
    paths = []
    for i in range(count):
        paths.append(root / f"v{i}.mp4")
        write_video(paths[-1], render_frames(random_events(rng, 4), seconds * 30 // 4, size=256), fps=30)
    return paths


def _items(videos: list[Path]) -> list[MCQItem]:
    return [MCQItem(f"q{i}", video, "Which colour comes first?", ["red", "green", "blue", "yellow"], 0)
            for i, video in enumerate(videos)]


def _items_per_second(items, answerer, prefetch: int) -> float:
    started = time.perf_counter()
    evaluate(items, answerer, num_frames=32, batch_size=4, progress=False, prefetch=prefetch,
             protocol=Protocol("lmms-eval", "videomme"))
    return len(items) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count, seconds, repeats = (4, 10, 1) if args.quick else (16, 40, 2)
    adapter, model, processor = load_for_eval("builtin:tiny-llava_onevision", dtype=torch.float32, device="cpu")
    answerer = VideoAnswerer(adapter, model, processor, max_new_tokens=16)
    with tempfile.TemporaryDirectory() as root:
        items = _items(_videos(Path(root), count, seconds))
        _items_per_second(items[:4], answerer, 0)  # warm-up: first calls, file cache
        rates = {prefetch: [] for prefetch in (0, 1)}
        for _ in range(repeats):  # interleaved, so drift hits both settings alike
            for prefetch in rates:
                rates[prefetch].append(_items_per_second(items, answerer, prefetch))
    for prefetch, values in rates.items():
        label = "decode in turn (prefetch=0)" if prefetch == 0 else "decode ahead (prefetch=1)"
        print(f"{label:32} {max(values):6.2f} items/s  (runs: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"items_per_s_before={max(rates[0]):.2f} items_per_s_after={max(rates[1]):.2f} "
          f"speedup={max(rates[1]) / max(rates[0]):.2f}")


if __name__ == "__main__":
    run_and_exit(main)
