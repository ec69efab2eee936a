"""Likelihood scoring of multiple-choice options: one packed forward equals one forward per option."""

import random

import numpy as np
import pytest
import torch

from conftest import FAMILIES
from tpo.data.frames import Clip, VideoInfo, frame_metadata, uniform_frame_indices
from tpo.evaluate.answers import mcq_prompt
from tpo.evaluate.benchmarks import MCQItem
from tpo.evaluate.likelihood import LikelihoodScorer, option_continuation
from tpo.evaluate.mcq import evaluate
from tpo.two_pass import labelled_row, response_logps
from tpo.models import get_adapter

QUESTIONS = [("What happens first?", ["a red square moves left", "nothing", "a blue circle moves up", "B"]),
             ("Which colour?", ["green", "a yellow circle that moves right, then down", "red"])]  # 3 options


def _clip(rng, frames=4, seconds=30.0, fps=25.0) -> Clip:
    info = VideoInfo(int(seconds * fps), fps)
    return Clip(rng.integers(0, 255, (frames, 64, 64, 3), dtype=np.uint8),
                frame_metadata(info, uniform_frame_indices(info.num_frames, frames)))


def _one_forward_per_option(scorer, clip, prompt, options) -> list[float]:
    encoding = scorer.adapter.encode_prompt(scorer.processor, clip, prompt)
    scores = []
    for ids in scorer.option_ids(options):
        row = labelled_row(encoding.tokens, ids)
        labels = row.pop("labels")[None]
        out = scorer.model(**{k: v[None] for k, v in row.items()}, **encoding.vision)
        scores.append(response_logps(out.logits, labels)[0].item())
    return scores


@pytest.mark.parametrize("family", FAMILIES)
def test_one_packed_forward_equals_a_forward_per_option(family):
    adapter = get_adapter(family)
    model, processor = adapter.load(f"builtin:tiny-{family}")
    scorer = LikelihoodScorer(adapter, model.eval(), processor)
    rng = np.random.default_rng(0)
    clips = [_clip(rng) for _ in QUESTIONS]
    prompts = [mcq_prompt(q, o) for q, o in QUESTIONS]
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    packed = scorer.score_options(clips, prompts, [o for _, o in QUESTIONS])
    hook.remove()
    assert len(calls) == 1 and [len(s) for s in packed] == [4, 3]
    with torch.no_grad():
        for clip, prompt, (_, options), scores in zip(clips, prompts, QUESTIONS, packed):
            torch.testing.assert_close(torch.tensor(scores), torch.tensor(_one_forward_per_option(
                scorer, clip, prompt, options)), rtol=1e-5, atol=1e-4)


def test_scored_continuation_is_letter_and_text_without_end_token():
    adapter = get_adapter("llava_onevision")
    model, processor = adapter.load("builtin:tiny-llava_onevision")
    ids = LikelihoodScorer(adapter, model, processor).option_ids(["a red square", "nothing"])
    assert option_continuation(1, "nothing") == "B. nothing"
    assert processor.tokenizer.decode(ids[0]) == "A. a red square" and processor.tokenizer.eos_token_id not in ids[1]
    # a model taught to answer with the option's text is scored on that form
    as_text = LikelihoodScorer(adapter, model, processor, continuation=lambda k, text: text).option_ids(["nothing"])
    assert processor.tokenizer.decode(as_text[0]) == "nothing"


def _items(videos, n, seed=0):
    rng = random.Random(seed)
    clips = sorted(videos.glob("*.mp4"))
    return [MCQItem(f"q{i}", clips[i % len(clips)], f"Question {i}?", [f"option {k} of {i}" for k in range(4)],
                    rng.randrange(4)) for i in range(n)]


class RiggedScorer:
    """A test double at the log-likelihood boundary: the right option is the likeliest, by a margin
    (``rigged=True``), or every option gets a random score."""

    def __init__(self, items, rigged: bool, seed: int = 0):
        self.answers = {mcq_prompt(i.question, i.options): i.answer for i in items}
        self.rigged, self.rng = rigged, random.Random(seed)

    def score_options(self, clips, prompts, options):
        assert len(clips) == len(prompts) == len(options)
        if self.rigged:
            return [[-1.0 if k == self.answers[p] else -3.0 for k in range(len(o))] for p, o in zip(prompts, options)]
        return [[-self.rng.random() * 10 for _ in o] for o in options]


def test_rigged_likelihood_scores_100_and_random_scores_chance(raw_videos):
    items = _items(raw_videos, 400)
    summary = evaluate(items, RiggedScorer(items, rigged=True), num_frames=2, batch_size=50, progress=False)
    assert summary["accuracy"] == 1.0 and summary["scored"] == 400 and summary["unparsed"] == 0
    summary = evaluate(items, RiggedScorer(items, rigged=False), num_frames=2, batch_size=50, progress=False)
    assert 0.18 < summary["accuracy"] < 0.32 and summary["unparsed"] == 0
