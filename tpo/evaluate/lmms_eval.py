"""lmms-eval's protocol for the video benchmarks the paper reports, as released in lmms-eval 0.7.3.

Per task (``videomme``, ``videomme_w_subtitle``, ``longvideobench_val_v``, ``mlvu_dev``): the prompt
its ``doc_to_text`` writes for a prompt variant (the task yaml's ``lmms_eval_specific_kwargs`` entry
for the ``--model`` name: ``default``, ``llava_vid``, ``qwen3_vl``), its ``max_new_tokens``, how its
``process_results`` reads a reply, and the frames its model classes show. Written from the released
package's code and checked against it item by item (tests/test_lmms_eval_parity.py).

Frames are the model class's, not the task's (``k``: the class's frame-count argument,
``max_frames_num``, ``max_num_frames`` or ``num_frames``, which ``--num-frames`` stands for):

- ``llava_vid`` (with ``force_sample=True``), ``llava_onevision``, ``llava_hf`` and ``longva`` with
  ``video_decode_backend=decord``: ``np.linspace(0, T - 1, k, dtype=int)``, first and last frame
  included (``llava``);
- ``longva`` (its default PyAV reader) and ``gemma4``: the same for ``min(k, T)`` frames
  (``llava_capped``);
- ``internvl_hf`` (InternVL3/3.5 ``-hf`` checkpoints): transformers' InternVL video processor with
  ``num_frames=k``, the centres of ``k`` equal segments (``segment_centres_capped``);
- ``qwen2_5_vl``: qwen_vl_utils' ``nframes`` path with ``min(k, T)`` rounded down to even, at
  ``round(linspace(0, T - 1, n))`` (``qwen``);
- ``qwen3_vl``: the same path with ``nframes=k`` uncapped, which qwen_vl_utils rounds to
  ``round(k / 2) * 2`` (Python's ``round``, half to even: 8 frames for k = 7 and 9, 12 for 11); where
  that exceeds ``T`` (or is 0) lmms-eval raises, and here ``T`` rounded down to even are shown
  (``qwen3_vl``);
- ``qwen3_5``: qwen_vl_utils' 2 fps path with ``max_frames=k`` (its default ``total_pixels`` turns
  ``nframes`` off), so fewer than ``k`` frames for a short video (``qwen_fps``);
- ``qwen2_vl``: qwen_vl_utils' 2 fps path, then ``k`` of those by ``np.unique(linspace)`` (``qwen2_vl``);
- ``glm4v`` has no video path (it sends the video file as an image, which cannot load), and the
  generic ``huggingface`` class leaves frames to GLM-4V's processor (2 fps up to its
  ``max_duration``, ignoring ``k``): GLM-4.1V gets LLaVA's ``k`` frames (``llava``).
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np

from tpo.data.frames import uniform_frame_indices

LMMS_EVAL_VERSION = "0.7.3"
VARIANTS = ("default", "llava_vid", "qwen3_vl")
MAX_NEW_TOKENS = {"videomme": 16, "longvideobench": 32, "mlvu": 16}

_VIDEOMME_INTRO = ("Select the best answer to the following multiple-choice question based on the video and the "
                   "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
_VIDEOMME_POST = {"default": "\nAnswer with the option's letter from the given choices directly.",
                  "llava_vid": "The best answer is:", "qwen3_vl": "Answer with the option letter only."}
_SUBTITLES_INTRO = "This video's subtitles are listed below: \n"
_SUBTITLE_FRAMES = {"default": 32, "llava_vid": 768, "qwen3_vl": 768}  # the subtitle task's frame_num
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')
_LVB_POST = "Answer with the option's letter from the given choices directly.\n"
_MLVU_POST = "\nOnly give the best option.\nBest option: ("
_LETTERS = "ABCDEFGH"


# ---- prompts -------------------------------------------------------------------------------------

def _labelled(options: list[str], style: str = "{}. {}") -> str:
    return "\n".join(style.format(_LETTERS[i], option) for i, option in enumerate(options))


def _videomme_options(options: list[str], labelled: bool) -> str:
    return "\n".join(options) if labelled else _labelled(options)


def videomme_prompt(question: str, options: list[str], variant: str = "default", labelled: bool = False) -> str:
    """``videomme``'s prompt. ``options``: texts, labelled ``A. ...`` here; ``labelled``: the dataset's
    own option lines (``"A. ..."``), passed through as they are, as lmms-eval does."""
    lines = _videomme_options(options, labelled)
    if variant == "qwen3_vl":
        return f"Question: {question}\nOptions:\n{lines}\n{_VIDEOMME_POST['qwen3_vl']}"
    return f"{_VIDEOMME_INTRO}\n{question}\n{lines}\n{_VIDEOMME_POST[variant]}"


def videomme_subtitle_prompt(question: str, options: list[str], subtitles: str, variant: str = "default",
                             labelled: bool = False) -> str:
    """``videomme_w_subtitle``'s prompt: it always ends "The best answer is:" (its post prompt is unused)."""
    if variant == "qwen3_vl":
        return _SUBTITLES_INTRO + subtitles + "\n" + videomme_prompt(question, options, "qwen3_vl", labelled)
    return (f"{_SUBTITLES_INTRO}{subtitles}\n{_VIDEOMME_INTRO}\n{question}\n{_videomme_options(options, labelled)}\n"
            f"The best answer is:")


def longvideobench_prompt(question: str, options: list[str]) -> str:
    """``longvideobench_val_v``'s prompt: the question and candidates as the file gives them."""
    return f"{question}\n{_labelled(options)}\n{_LVB_POST}"


def mlvu_prompt(question: str, options: list[str]) -> str:
    """``mlvu_dev``'s prompt. Its Hugging Face copy's ``question`` holds the options as ``(A) ...``
    lines under the question; the MLVU json files keep them apart, and this rebuilds that text from
    the question and candidates as the files give them."""
    return f"{question}\n{_labelled(options, '({}) {}')}{_MLVU_POST}"


# ---- Video-MME subtitles -------------------------------------------------------------------------

def _srt_seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.split(":")
    seconds, millis = rest.split(",")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000


def _srt_cues(text: str) -> dict[tuple[float, float], str]:
    """The task's reading of an ``.srt``: blocks split at blank lines, the second line the times, the
    rest the text joined by spaces; a block of fewer than 3 lines is skipped; equal times keep the
    last text at the first one's place."""
    cues = {}
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if block.strip() and len(lines) >= 3:
            start, end = lines[1].split(" --> ")
            cues[(_srt_seconds(start), _srt_seconds(end))] = " ".join(lines[2:])
    return cues


def subtitle_lines(srt: Path, fps: float, total_frames: int, variant: str = "default") -> str:
    """The subtitle text ``videomme_w_subtitle`` puts in the prompt.

    The cues shown at ``frame_num`` evenly spaced frames of the whole video (32, or 768 for the
    ``llava_vid`` and ``qwen3_vl`` variants; not the frames the model is shown), in the order a
    Python set of their indices gives; of each, the first white ``<font>`` span (cues without one are
    left out). Frames are compared as ``int(seconds * fps)``. No ``.srt``: "No subtitles available".
    A malformed time raises ``ValueError``.
    """
    if not srt.is_file():
        return "No subtitles available"
    cues = [(int(start * fps), int(end * fps), text)
            for (start, end), text in _srt_cues(srt.read_text(encoding="utf-8")).items()]
    sampled = np.linspace(0, total_frames - 1, _SUBTITLE_FRAMES[variant], dtype=int).tolist()
    shown = list({i for frame in sampled for i, (start, end, _) in enumerate(cues) if start <= frame < end})
    spans = [_FONT.findall(cues[i][2]) for i in shown]
    return "\n".join(found[0] for found in spans if found)


# ---- reading replies -----------------------------------------------------------------------------

# ``python -m lmms_eval``'s default ``--reasoning_tags``, which its evaluator strips from every reply
REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def strip_reasoning_tags(reply: str, tags=REASONING_TAGS) -> str:
    """lmms-eval's first step on a reply (``api/reasoning.py``'s ``strip_reasoning_tags``), for each
    tag pair in turn: cut every block from the first opening tag to the next closing tag after it
    (until an opening tag has no closing one after it); then, only if a closing tag remains and no
    opening tag of that pair does (a template that opened the block in the prompt), keep what follows
    the last closing tag. An unclosed opening tag stays, and so does anything around it."""
    for start_tag, end_tag in tags:
        while start_tag in reply and end_tag in reply:
            start = reply.find(start_tag)
            end = reply.find(end_tag, start)
            if end == -1:
                break
            reply = reply[:start] + reply[end + len(end_tag):]
        if end_tag in reply and start_tag not in reply:
            reply = reply.rsplit(end_tag, 1)[-1]
    return reply.strip()


_ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
         "space": 2, "fallback": 0}
_MARKS = (("({})", "parentheses"), ("{}.", "period"), ("{}:", "colon"), ("{})", "right_paren"), ("{} ", "space"))


def mcq_letter(reply: str, choices: str = "ABCD") -> str:
    """The letter Video-MME's and MLVU's ``process_results`` read from a reply (``""``: none).

    Every way a letter can appear is a candidate ranked by how sure a form is ("B" alone at the
    start, then at the end, after an answer phrase, in parentheses, before "." ":" ")" or a space;
    any occurrence only when nothing else matched); the best-ranked form wins, and within it the
    occurrence nearest the end.
    """
    if not reply or not reply.strip():
        return ""
    text = reply.strip()
    for mark in ",.!?;:'\"":
        text = text.strip(mark)
    text = f" {text} "
    found = [(ch, text.rfind(pattern.format(ch)), kind) for pattern, kind in _MARKS for ch in choices
             if pattern.format(ch) in text]
    lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lower.find(phrase)
        if at != -1:
            after = [(ch, text.find(ch, at + len(phrase))) for ch in choices]
            found += [(ch, position, "phrase") for ch, position in after if position != -1]
    bare = text.strip()
    found += [(ch, 0, "start") for ch in choices if bare.startswith(ch) and (len(bare) == 1 or not bare[1].isalpha())]
    found += [(ch, len(text) - 1, "end") for ch in choices
              if bare.endswith(ch) and (len(bare) == 1 or not bare[-2].isalpha())]
    if not found:
        found = [(ch, text.rfind(ch), "fallback") for ch in choices if ch in text]
    return max(found, key=lambda c: (_RANK[c[2]], c[1]))[0] if found else ""


_LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
                 "The correct option is", "Best answer:", "Best option:")


def longvideobench_letter(reply: str) -> str | None:
    """The letter LongVideoBench's ``process_results`` reads: the first capital A–E left after its
    answer phrases are removed; ``None`` where it guesses instead (no such capital)."""
    text = reply.strip()
    for prefix in _LVB_PREFIXES:
        text = text.replace(prefix, "")
    match = re.search(r"[ABCDE]", text)
    return match[0] if match else None


def guess(item_id: str, num_options: int, seed: int) -> int:
    """LongVideoBench's random option for a reply it cannot read. lmms-eval draws from the process's
    shared ``random`` (so a run's guesses depend on thread timing); here each item's draw is seeded
    by ``seed`` and its id, so a rerun guesses the same."""
    return random.Random(f"{seed}/{item_id}").randrange(num_options)


# ---- frames --------------------------------------------------------------------------------------

def llava_frames(total: int, count: int) -> list[int]:
    """``llava_vid``/``llava_onevision``/``llava_hf`` (and ``longva`` on decord): first to last frame,
    truncated; ``count`` of them even past ``total`` (repeats)."""
    return np.linspace(0, total - 1, count, dtype=int).tolist()


def capped_llava_frames(total: int, count: int) -> list[int]:
    """``longva`` (its default PyAV reader) and ``gemma4``: LLaVA's positions, never more than the
    video's ``total`` frames."""
    return llava_frames(total, min(count, total))


def segment_centre_frames(total: int, count: int) -> list[int]:
    """``internvl_hf`` (InternVL's video processor, ``initial_shift=True``): the centres of ``count``
    equal segments, as ``--protocol tpo`` shows them. InternVL refuses ``count > total``; here all
    ``total`` frames are shown instead."""
    return uniform_frame_indices(total, min(count, total))


def _qwen_linspace(total: int, count: int) -> list[int]:
    import torch

    return torch.linspace(0, total - 1, count).round().long().tolist()


def _even_floor(value: float) -> int:
    return math.floor(value / 2) * 2


def qwen_frames(total: int, count: int) -> list[int]:
    """``qwen2_5_vl`` (chat; qwen_vl_utils' ``nframes``): ``min(count, total)`` rounded down to even
    (at least 2), at rounded positions."""
    return _qwen_linspace(total, max(2, min(count, total) // 2 * 2))


def qwen3_vl_frames(total: int, count: int) -> list[int]:
    """``qwen3_vl`` (chat): qwen_vl_utils' ``nframes=count`` uncapped, rounded to ``round(count / 2) * 2``
    (Python's ``round``, half to even: 8 for 7 and for 9, 12 for 11, 16 for 15), at rounded positions.
    lmms-eval raises where that count is above ``total`` or 0 (one short video ends its whole run);
    here ``total`` rounded down to even (at least 2) are shown instead, as for ``qwen2_5_vl``."""
    return _qwen_linspace(total, max(2, min(round(count / 2) * 2, total // 2 * 2)))


def qwen_fps_frames(total: int, fps: float, most: int) -> list[int]:
    """qwen_vl_utils' ``fps`` path: 2 frames a second, at least 4, at most ``most`` and ``total``, an
    even count at rounded positions (``qwen3_5``, whose default ``total_pixels`` takes this path with
    ``max_frames=max_num_frames``). Where qwen_vl_utils refuses fewer than 2, 2 are shown."""
    wanted = min(max(total / fps * 2.0, 4), _even_floor(most), total)
    return _qwen_linspace(total, max(2, _even_floor(wanted)))


def qwen2_vl_frames(total: int, fps: float, count: int) -> list[int]:
    """``qwen2_vl``: qwen_vl_utils samples 2 frames a second (at most 768), and the model class keeps
    ``count`` of those (fewer when some coincide)."""
    sampled = qwen_fps_frames(total, fps, 768)
    keep = np.unique(np.linspace(0, len(sampled) - 1, count, dtype=int))
    return [sampled[i] for i in keep]


# rule name -> frames(total, fps, count)
_RULES = {
    "llava": lambda total, fps, count: llava_frames(total, count),
    "llava_capped": lambda total, fps, count: capped_llava_frames(total, count),
    "segment_centres_capped": lambda total, fps, count: segment_centre_frames(total, count),
    "qwen": lambda total, fps, count: qwen_frames(total, count),
    "qwen3_vl": lambda total, fps, count: qwen3_vl_frames(total, count),
    "qwen_fps": qwen_fps_frames,
    "qwen2_vl": qwen2_vl_frames,
}
RULES = tuple(_RULES)

# family -> rule of the lmms-eval model class its checkpoints run with (see the module docstring)
FRAME_RULES = {"llava_onevision": "llava", "llava_next_video": "llava", "qwen2_5_vl": "qwen",
               "qwen3_vl": "qwen3_vl", "qwen2_vl": "qwen2_vl", "glm4v": "llava", "gemma4": "llava_capped",
               "qwen3_5": "qwen_fps", "internvl": "segment_centres_capped", "longva": "llava_capped"}


def frame_indices(rule: str, total: int, fps: float, count: int) -> list[int]:
    """The frames lmms-eval's model class for a family shows (``FRAME_RULES``)."""
    return _RULES[rule](total, fps, count)
