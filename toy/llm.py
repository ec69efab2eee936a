"""The "toy LLM" of the end-to-end reproduction: rule-based stand-ins for GPT-4o-mini.

Served by :func:`toy_server` (a :class:`data_gen.scripted_server.ScriptedServer`) under three model
names, speaking the real protocol:

- ``toy-captioner`` names the object in a frame: colour, shape (how much of its bounding box it
  fills) and place, and the colour of an object entering inside it ("The red square at the top
  left, with blue entering inside it.");
- ``toy-llm`` reads the timestamped captions of a clip and writes multiple-choice questions about
  it — what appears right after / right before an object — built
  exactly as the held-out questions are (``toy.world``'s question builders: distractors are the
  other colours, those in the captions first), in the evaluation's prompt format;
- ``toy-judge`` answers the question from the captions itself and applies the three post-filter
  rules to the two answers, rule 1 as the prompt words it (a tie drops the pair only if rule 1
  says "as good as").

They only see what the real models would see (pixels, then caption text), never the ground truth.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

import numpy as np

from data_gen.config import PostFilterConfig, QuestionConfig
from data_gen.postfilter import RULE1
from data_gen.scripted_server import ScriptedServer, caption_lines, main, one_image, prompt_text, template_values
from tpo.clean_exit import run_and_exit
from toy.world import ENTERING_RADIUS, after_question, before_question, name
from tpo.evaluate.answers import extract_choice, mcq_prompt, parse_mcq
from tpo.synthetic.world import PALETTE, find_object, place

_CAPTION = re.compile(r"The (\w+) (\w+) at the (\w+) (\w+)(?:, with (\w+) entering inside it)?\.")
TYPES = ("temporal order",)
_RIM_RADIUS = ENTERING_RADIUS + 3.5  # pixels from an object's centre beyond which only the object itself is drawn


def caption_image(image: np.ndarray) -> str:
    found = find_object(image)
    if found is None:
        return "An empty dark frame."
    _, mask = found
    ys, xs = np.nonzero(mask)
    cy, cx = int(round(ys.mean())), int(round(xs.mean()))
    pixels = image.astype(float)
    # an entering object is drawn at the object's centre: the colour there, and the colour most of the
    # rim votes for (compression blends the two where they meet, so each is read away from the seam)
    at_centre = _nearest(np.median(pixels[cy - 2:cy + 3, cx - 2:cx + 3].reshape(-1, 3), axis=0)[None])[0]
    rim = (ys - cy) ** 2 + (xs - cx) ** 2 > _RIM_RADIUS ** 2
    votes = _nearest(pixels[ys[rim], xs[rim]]) if rim.sum() > 10 else [at_centre]
    colour = max(set(votes), key=list(votes).count)
    # the shape from how much of its bounding box the object fills, counting only pixels close to its
    # colours (compression blurs a faint halo around it that would make squares look round)
    body = np.zeros(mask.shape, dtype=bool)
    for c in {colour, at_centre}:
        body |= np.abs(pixels - np.array(PALETTE[c])).max(axis=-1) < 100
    mask = body if body.sum() >= 4 else mask
    text = f"The {colour} {_shape(mask)} at the {place(mask)}"
    return text + (f", with {at_centre} entering inside it." if at_centre != colour else ".")


def _nearest(rgb: np.ndarray) -> list[str]:
    """The palette colour nearest to each row of ``rgb``."""
    palette = np.array(list(PALETTE.values()), dtype=float)
    return [list(PALETTE)[k] for k in ((rgb[:, None, :] - palette) ** 2).sum(-1).argmin(axis=1)]


def _shape(mask: np.ndarray) -> str:
    """Square or circle, from how much of its bounding box the mask fills."""
    ys, xs = np.nonzero(mask)
    fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return "square" if fill > 0.87 else "circle"


# ---- reading captions back ------------------------------------------------------------------------

def objects_in_order(captions: list[str]) -> list[str]:
    """The colours of the objects seen, each once, in order of appearance. Consecutive captions of
    one colour are one object; an object seen entering is the next one."""
    runs: list[str] = []
    for text in captions:
        match = _CAPTION.search(text)
        if not match:
            continue
        for colour in (match.group(1), match.group(5)):
            if colour and (not runs or runs[-1] != colour):
                runs.append(colour)
    return runs


def answer_from_captions(question: str, names: list[str]) -> str | None:
    """The answer the captions (``objects_in_order``) give to one of the toy question forms, or ``None``."""
    if len(set(names)) != len(names):
        return None  # an object seen twice: "right after" is ambiguous
    if m := re.fullmatch(r"What appears right (after|before) the (\w+) \w+\?", question):
        if m.group(2) not in names:
            return None
        i = names.index(m.group(2)) + (1 if m.group(1) == "after" else -1)
        return name(names[i]) if 0 <= i < len(names) else None
    return None


def _caption_lines(captions: str) -> list[str]:
    return [text for _, text in caption_lines(captions)]


# ---- the question writer --------------------------------------------------------------------------

def candidate_questions(colours: list[str], rng: random.Random) -> list[tuple[str, str, list[str]]]:
    """``(type, question, options)`` the captions answer, taking the two moment kinds (after,
    before) in turn, in a random order, as the held-out questions mix them."""
    kinds = [("temporal order", [after_question(colours, i, rng) for i in range(len(colours) - 1)]),
             ("temporal order", [before_question(colours, i, rng) for i in range(1, len(colours))])]
    kinds = [(t, [q for q in qs if answer_from_captions(q["question"], colours)]) for t, qs in kinds]
    for _, questions in kinds:
        rng.shuffle(questions)
    rng.shuffle(kinds)
    out = []
    for turn in range(max((len(qs) for _, qs in kinds), default=0)):
        out += [(t, qs[turn]["question"], qs[turn]["options"]) for t, qs in kinds if turn < len(qs)]
    return out


def _seeded(prompt: str) -> random.Random:
    return random.Random(int(hashlib.sha256(prompt.encode()).hexdigest(), 16))


def write_questions(prompt: str) -> str:
    fields = template_values(QuestionConfig.prompt, prompt)
    count, types = int(fields["num_questions"]), {t.strip() for t in fields["question_types"].split(",")}
    picked = [c for c in candidate_questions(objects_in_order(_caption_lines(fields["captions"])), _seeded(prompt))
              if c[0] in types][:count]
    return json.dumps({"questions": [{"type": t, "question": mcq_prompt(q, o)} for t, q, o in picked]})


# ---- the judge ------------------------------------------------------------------------------------

def judge(prompt: str) -> str:
    fields = template_values(PostFilterConfig.prompt, prompt)
    captions, question, chosen, rejected = (fields[k] for k in ("captions", "question", "chosen", "rejected"))
    ties_dropped = fields["rule1"] == RULE1["ties_dropped_too"][0]
    stem, options = parse_mcq(question)
    truth = answer_from_captions(stem, objects_in_order(_caption_lines(captions)))
    if truth is None or truth not in options:
        return _verdict(3, "the captions do not give one answer to this question")
    correct = options.index(truth)
    if extract_choice(chosen, options) != correct:
        return _verdict(2, f"answer A does not pick {truth!r}, which the captions show")
    rejected_right = extract_choice(rejected, options) == correct
    if rejected_right and ties_dropped:
        return _verdict(1, "answer B picks the right option too")
    b_picks = "B picks it too" if rejected_right else "B does not"
    return json.dumps({"keep": True, "rule": None, "reason": f"A picks {truth!r} as the captions show; {b_picks}"})


def _verdict(rule: int, reason: str) -> str:
    return json.dumps({"keep": False, "rule": rule, "reason": reason})


SCRIPTS = {"toy-captioner": lambda request: caption_image(one_image(request)),
           "toy-llm": lambda request: write_questions(prompt_text(request)),
           "toy-judge": lambda request: judge(prompt_text(request))}


def toy_server(**kwargs) -> ScriptedServer:
    """``with toy_server() as server: ...``: the scripted OpenAI-compatible server with the toy LLM."""
    return ScriptedServer(scripts=SCRIPTS, **kwargs)


if __name__ == "__main__":  # python -m toy.llm --port 8000: the toy LLM for data_gen/configs/toy.yaml
    run_and_exit(lambda: main(SCRIPTS, __doc__))
