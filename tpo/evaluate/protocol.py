"""How a benchmark is asked and scored: which frames, which prompt, how many tokens, how a reply is read.

- ``lmms-eval`` (``tpo evaluate``'s default for Video-MME, LongVideoBench and MLVU): lmms-eval
  0.7.3's tasks, as the paper reports them (:mod:`tpo.evaluate.lmms_eval`): the frames lmms-eval's
  model class for the family shows, the task's prompt for the prompt variant, its
  ``max_new_tokens``, its reading of replies, and LongVideoBench's random option for a reply it
  cannot read (seeded per item here).
- ``tpo`` (ours; the only one for ``jsonl`` items, NIAH and the toy): segment-centre frames, the
  question, ``A. ...`` options and one instruction line, subtitles at the shown frames' times,
  :func:`~tpo.evaluate.answers.extract_choice`; an unread reply is wrong.

Either protocol can read replies the other's way (``reading``); predictions record both readings,
and the summary counts the items they read differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpo.data.frames import Clip, uniform_frame_indices
from tpo.errors import TPOError
from tpo.evaluate import lmms_eval
from tpo.evaluate.answers import extract_choice, mcq_prompt
from tpo.evaluate.benchmarks import LETTERS, MCQItem
from tpo.evaluate.subtitles import SubtitleError, with_subtitles

PROTOCOLS = ("lmms-eval", "tpo")
LMMS_EVAL_BENCHMARKS = ("videomme", "longvideobench", "mlvu")
TPO_MAX_NEW_TOKENS = 16


def strip_reasoning(reply: str) -> str:
    """lmms-eval's first step on a reply (:func:`tpo.evaluate.lmms_eval.strip_reasoning_tags`): its
    ``<think>…</think>`` and ``<analysis>…</analysis>`` blocks cut; the text after the last closing
    tag kept only where no opening tag of that kind remains."""
    return lmms_eval.strip_reasoning_tags(reply)


@dataclass(frozen=True)
class Reading:
    choice: int | None  # the option read, None: none
    guessed: bool = False  # LongVideoBench's random option for a reply it cannot read


@dataclass(frozen=True)
class Protocol:
    name: str = "tpo"
    benchmark: str = "jsonl"
    family: str | None = None  # lmms-eval: whose model class's frames (FRAME_RULES; None: LLaVA's)
    variant: str = "default"  # lmms-eval: the task's prompt variant (lmms_eval.VARIANTS)
    reading: str | None = None  # how replies are read: "lmms-eval" | "tpo" (default: the protocol's)
    seed: int = 0  # LongVideoBench's guesses

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise TPOError(f"unknown protocol {self.name!r}; choose from {list(PROTOCOLS)}")
        if self.name == "lmms-eval" and self.benchmark not in LMMS_EVAL_BENCHMARKS:
            raise TPOError(f"lmms-eval has no task for {self.benchmark!r} items: use --protocol tpo")
        if self.variant not in lmms_eval.VARIANTS:
            raise TPOError(f"unknown prompt variant {self.variant!r}; choose from {list(lmms_eval.VARIANTS)}")
        if self.reading not in (None, *PROTOCOLS):
            raise TPOError(f"unknown reading {self.reading!r}; choose from {list(PROTOCOLS)}")
        if self.name == "lmms-eval" and self.family is not None and self.family not in lmms_eval.FRAME_RULES:
            raise TPOError(f"tpo has no lmms-eval {lmms_eval.LMMS_EVAL_VERSION} frame rule for family "
                           f"{self.family!r} (it has rules for {', '.join(lmms_eval.FRAME_RULES)}): add its "
                           f"lmms-eval model class's rule to FRAME_RULES in tpo/evaluate/lmms_eval.py, "
                           f"or use --protocol tpo")

    @property
    def replies_read_by(self) -> str:
        return self.reading or self.name

    @property
    def frame_rule(self) -> str:
        if self.name != "lmms-eval":
            return "segment-centres"
        return "llava" if self.family is None else lmms_eval.FRAME_RULES[self.family]  # None: a served model

    @property
    def max_new_tokens(self) -> int:
        return lmms_eval.MAX_NEW_TOKENS[self.benchmark] if self.name == "lmms-eval" else TPO_MAX_NEW_TOKENS

    def frame_indices(self, total: int, fps: float, count: int) -> list[int]:
        if self.name == "tpo":
            return uniform_frame_indices(total, count)
        return lmms_eval.frame_indices(self.frame_rule, total, fps, count)

    def prompt(self, item: MCQItem, clip: Clip) -> str:
        """``tpo``: the item's tidied question and options; ``lmms-eval``: the question and options as
        the annotation file gives them (``item.source_*``), which lmms-eval's tasks pass through."""
        if self.name == "tpo":
            prompt = mcq_prompt(item.question, item.options)
            return prompt if item.subtitles is None else with_subtitles(prompt, item.subtitles, clip.times)
        question = item.question if item.source_question is None else item.source_question
        given = item.source_options is not None
        options = item.source_options if given else item.options
        if self.benchmark == "longvideobench":
            return lmms_eval.longvideobench_prompt(question, options)
        if self.benchmark == "mlvu":
            return lmms_eval.mlvu_prompt(question, options)
        if item.subtitles is None:  # Video-MME's own options carry their labels ("A. ...")
            return lmms_eval.videomme_prompt(question, options, self.variant, labelled=given)
        lines = _subtitle_lines(item, clip, self.variant)
        return lmms_eval.videomme_subtitle_prompt(question, options, lines, self.variant, labelled=given)

    def read(self, reply: str, item: MCQItem, reading: str | None = None) -> Reading:
        """The option ``reply`` picks, read this protocol's way (or ``reading``'s)."""
        if (reading or self.replies_read_by) == "tpo":
            return Reading(extract_choice(reply, item.options))
        reply = strip_reasoning(reply)
        if self.benchmark == "longvideobench":
            letter = lmms_eval.longvideobench_letter(reply)
            if letter is None:
                return Reading(lmms_eval.guess(item.id, len(item.options), self.seed), guessed=True)
        else:
            letter = lmms_eval.mcq_letter(reply) or None
        return Reading(None if letter is None else LETTERS.index(letter))

    def other_reading(self) -> str:
        return "tpo" if self.replies_read_by == "lmms-eval" else "lmms-eval"

    def settings(self) -> dict:
        """What the summary records about how the benchmark was asked."""
        recorded = {"protocol": self.name, "reading": self.replies_read_by, "frame_rule": self.frame_rule}
        if self.name == "lmms-eval":
            recorded.update(lmms_eval_version=lmms_eval.LMMS_EVAL_VERSION, prompt_variant=self.variant)
        if self.replies_read_by == "lmms-eval" and self.benchmark == "longvideobench":
            recorded["guess_seed"] = self.seed
        return recorded


def _subtitle_lines(item: MCQItem, clip: Clip, variant: str) -> str:
    try:
        return lmms_eval.subtitle_lines(item.subtitles, clip.metadata.fps, clip.metadata.total_num_frames, variant)
    except (ValueError, UnicodeDecodeError) as err:
        raise SubtitleError(f"{item.subtitles}: not read as lmms-eval reads subtitles ({err})") from None
