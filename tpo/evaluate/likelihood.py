"""Multiple choice by likelihood (``--scoring likelihood``; lmms-eval's ``loglikelihood`` output type).

Instead of generating a reply and reading a letter out of it, the model scores every option and
the prediction is the option it finds most likely. What is scored, for option ``k`` with text
``t``, is the continuation ``"<letter>. <t>"`` (e.g. ``"B. a red square"``, as the prompt lists
it) right after the prompt's assistant turn opens: the prompt is the one generation sees (same
question, options and instruction to answer with the letter). The score is the continuation's
summed token log-probability, as lmms-eval sums it, with no end-of-turn token (the option is
judged as the start of the answer, not as the whole answer). Summing favours short options a
little; the letter token comes first and usually carries most of the decision.

All options of a question are scored in one forward: one packed row ``[prompt][option 1]...[option K]``
per question, each option attending to the prompt and itself only, positions restarting after the
prompt for each (3-D M-RoPE too), the video encoded once (:mod:`tpo.shared_prefix`). A model with
recurrent layers, for which packing is not exact, scores one row per option in that one forward
(:mod:`tpo.scoring` decides).

Prediction rows keep their format: ``reply`` is ``None`` and ``option_logps`` holds the K scores.
"""

from __future__ import annotations

from typing import Callable

import torch

from tpo.data.frames import Clip
from tpo.evaluate.benchmarks import LETTERS
from tpo.models import ModelAdapter
from tpo.models.adapter import pad_token_id
from tpo.scoring import answer_logps, layout_for, pack_answers


def option_continuation(index: int, text: str) -> str:
    """What is scored for option ``index``: its letter and text as the prompt lists them."""
    return f"{LETTERS[index]}. {text}"


class LikelihoodScorer:
    """``scorer.score_options(clips, prompts, options)`` -> per question, the summed log-prob of each option.

    ``continuation(index, text)`` is what is scored for an option: :func:`option_continuation` (the
    letter and text) by default; a model taught to answer another way is scored on its own form.
    """

    def __init__(self, adapter: ModelAdapter, model, processor,
                 continuation: Callable[[int, str], str] = option_continuation):
        self.adapter, self.model, self.processor = adapter, model, processor
        self.continuation = continuation
        self.layout = layout_for(model.config)

    def option_ids(self, options: list[str]) -> list[list[int]]:
        return [self.adapter.response_ids(self.processor, self.continuation(k, text), end=False)
                for k, text in enumerate(options)]

    @torch.no_grad()  # not inference_mode: a sharded model that first runs under it cannot train after (FSDP2)
    def score_options(self, clips: list[Clip], prompts: list[str], options: list[list[str]]) -> list[list[float]]:
        """Clips must have equally many frames (their vision tensors are concatenated)."""
        encodings = [self.adapter.encode_prompt(self.processor, clip, prompt) for clip, prompt in zip(clips, prompts)]
        answers = [self.option_ids(o) for o in options]
        batch = pack_answers(self.layout, encodings, answers, pad_token_id(self.processor))
        device = next(self.model.parameters()).device
        batch["inputs"] = {k: v.to(device) for k, v in batch["inputs"].items()}
        sums, _ = answer_logps(self.adapter, self.model, batch)
        return [row[: len(o)] for row, o in zip(sums.tolist(), options)]
