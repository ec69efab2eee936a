"""Probe a toy base-model recipe on the dev split before any calibration (issue 19).

The calibration rule (``benchmarks/toy_calibration.py``) needs a base whose window accuracy is at
least 95 %; no recipe has reached it. This script trains one variant of ``toy.base`` and prints its
dev readout, so that a recipe change can be judged against today's recipe (``--reply option``,
no flags) trained in the same session:

- ``--reply named``: answers that name the asked-about object right before the answer, in the
  description's words: after X "The X, then the Y.", before X "The Y, then the X.", the motion of
  X "The X moves left." (order and counting keep today's form). Likelihood scoring scores each
  option in that form.
- ``--tie``: the language model's input and output embeddings tied.
- ``--patch 16``: one visual token per frame (a 2x2 patch grid on the 32-pixel frames, pooled to
  1x1) instead of four.

    python benchmarks/toy_base_probe.py --reply named --tie      # ~25 min on one core

The last line is one JSON object: the variant and its dev accuracies (%), window and long clips.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import toy.base as toy_base  # noqa: E402
from toy.world import FRAMES_PER_OBJECT, NUM_FRAMES, WINDOW_OBJECTS, reply  # noqa: E402
from tpo.evaluate.answers import parse_mcq  # noqa: E402
from tpo.evaluate.likelihood import LikelihoodScorer  # noqa: E402

_NEIGHBOUR = re.compile(r"What appears right (after|before) (the \w+ \w+)\?")
_MOTION = re.compile(r"Which way does (the \w+ \w+) move\?")


def named_reply(question: str, option: str) -> str:
    """The ``--reply named`` answer to ``question`` with ``option``."""
    if m := _NEIGHBOUR.fullmatch(question):
        text = f"{m.group(2)}, then {option}." if m.group(1) == "after" else f"{option}, then {m.group(2)}."
    elif m := _MOTION.fullmatch(question):
        text = f"{m.group(1)} moves {option}."
    else:
        return reply(0, option)
    return text[0].upper() + text[1:]


class NamedReplyScorer(LikelihoodScorer):
    """Likelihood scoring of each option as :func:`named_reply` words it (it needs the question)."""

    def score_options(self, clips, prompts, options):
        self._questions = iter(parse_mcq(p)[0] for p in prompts)
        return super().score_options(clips, prompts, options)

    def option_ids(self, options):
        question = next(self._questions)
        return [self.adapter.response_ids(self.processor, named_reply(question, t), end=False) for t in options]


def _with_tied_embeddings(build):
    """``toy.base``'s model builder with the language model's input and output embeddings tied."""
    return lambda corpus, text, vision: build(corpus, text={**text, "tie_word_embeddings": True}, vision=vision)


def _readout(rows: list[dict], split_file: Path) -> dict:
    from toy.readout import readout

    items = (json.loads(line) for line in split_file.read_text().splitlines())
    questions = {item["id"]: item["question"] for item in items}
    for row in rows:
        row["meta"].setdefault("floor", 0.25)  # window rows carry no floor
    return readout(rows, questions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reply", choices=("option", "named"), default="option")
    parser.add_argument("--tie", action="store_true")
    parser.add_argument("--patch", type=int, default=8, help="vision patch size on the 32-pixel frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--num_clips", type=int, default=800)
    parser.add_argument("--share", type=float, default=0.3, help="long_moment_share")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "toy-probe")
    args = parser.parse_args(argv)

    import torch

    import tpo.synthetic.tiny_builders as builders
    from toy.reproduction import PipelineRun
    from tpo.evaluate.benchmarks import load_benchmark
    from tpo.evaluate.mcq import evaluate
    from tpo.evaluate.model import load_for_eval
    from tpo.synthetic.tiny_models import cache_dir

    torch.set_num_threads(1)
    builders.PATCH = args.patch  # read when the model is built (the processor is saved with it)
    if args.reply == "named":
        toy_base.answer_text = lambda q: named_reply(q["question"], q["options"][q["answer"]])
    if args.tie:
        toy_base.build_llava_onevision = _with_tied_embeddings(toy_base.build_llava_onevision)
    tag = f"reply-{args.reply}{'-tie' if args.tie else ''}-patch{args.patch}-seed{args.seed}-steps{args.steps}" \
          f"-clips{args.num_clips}-share{args.share}"
    run = PipelineRun(args.out)
    base = cache_dir() / f"toy-probe-{tag}"
    if not (base / "config.json").exists():
        base.mkdir(parents=True, exist_ok=True)
        toy_base.train_toy_base(base, replace(run.base, seed=args.seed, steps=args.steps, num_clips=args.num_clips,
                                              long_moment_share=args.share))
    adapter, model, processor = load_for_eval(str(base), dtype=torch.float32, device="cpu")
    scorer = (NamedReplyScorer(adapter, model, processor) if args.reply == "named"
              else LikelihoodScorer(adapter, model, processor, continuation=reply))
    result = {"variant": tag}
    for kind in ("window", "mcq"):
        split_file = run.split("dev", kind)
        predictions = args.out / f"{tag}-{kind}.jsonl"
        frames = FRAMES_PER_OBJECT * WINDOW_OBJECTS if kind == "window" else NUM_FRAMES
        evaluate(load_benchmark("jsonl", split_file).items, scorer, num_frames=frames, batch_size=32,
                 predictions_path=predictions, progress=False)
        rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        point = _readout(rows, split_file)
        keys = ("moment", "after_before", "motion") + (("order", "counting") if kind == "mcq" else ())
        result.update({f"{kind}/{k}": round(100 * point[k], 1) for k in keys})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
