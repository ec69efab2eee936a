"""The toy LLM reads only pixels and caption text, yet its questions and verdicts match the ground truth."""

import base64
import io
import json
import random
from string import Template

import numpy as np
from PIL import Image

from tpo.models.served import image_data_url
from data_gen.config import prompt_template
from data_gen.postfilter import judge_prompt
from data_gen.questions import format_captions, parse_questions
from toy.llm import caption_image, judge, objects_in_order, write_questions
from toy.world import answer_text, clip_questions, describe, long_events, moment_questions, name, render, short_events
from tpo.evaluate.answers import extract_choice


def _through_jpeg(frame: np.ndarray) -> np.ndarray:
    url = image_data_url(frame, 64, 90)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def _captions(events):
    frames = render(events)[1::2]  # the long clips' density: 4 frames per object
    return [{"frame": i, "text": caption_image(_through_jpeg(f))} for i, f in enumerate(frames)]


def test_captioner_sees_colour_shape_order_and_each_hand_over():
    rng = random.Random(0)
    clips_right, frames_right, frames = 0, 0, 0
    for _ in range(20):
        events = long_events(rng)  # all eight colours of the palette
        captions = [c["text"] for c in _captions(events)]
        clips_right += objects_in_order(captions) == [e.colour for e in events]
        for k, e in enumerate(events):  # each frame's object and shape, and the next object entering in its last
            entering = f", with {events[k + 1].colour} entering inside it." if k + 1 < len(events) else "."
            expected = [f"The {e.colour} {e.shape} "] * 4
            frames_right += sum(text.startswith(x) for text, x in zip(captions[4 * k: 4 * k + 4], expected))
            frames_right += captions[4 * k + 3].endswith(entering) and not any(
                "entering" in text for text in captions[4 * k: 4 * k + 3])
            frames += 5
    # JPEG and the video codec blend a small object into the one around it (cyan around red reads green)
    assert clips_right >= 18 and frames_right / frames >= 0.97, (clips_right, frames_right / frames)


def _question_prompt(captions, count=4, types="temporal order"):
    return Template(prompt_template("questions.txt")).substitute(
        captions=format_captions(captions, fps=8.0), num_questions=count, question_types=types)


def _judge_prompt(captions, question, chosen, rejected, rule1="paper"):
    return judge_prompt(prompt_template("postfilter.txt"), rule1, captions=format_captions(captions, fps=8.0),
                        question=question, chosen=chosen, rejected=rejected)


def test_questions_are_multiple_choice_with_the_true_answer_among_the_options():
    rng = random.Random(1)
    checked = 0
    for _ in range(20):
        events = short_events(rng, 4)
        captions = _captions(events)
        reply = write_questions(_question_prompt(captions))
        asked = parse_questions(reply, ["temporal order"], 4)["questions"]
        assert asked and all(q["type"] == "temporal order" for q in asked)
        stems = [q["question"].split(" right ")[1].split()[0] for q in asked]
        assert stems[:2] in (["after", "before"], ["before", "after"])  # the moment kinds taken in turn
        names = [name(e.colour) for e in events]
        for q in asked:
            stem, *options, instruction = q["question"].split("\n")
            assert instruction.startswith("Answer with") and len(options) == 4
            options = [o[3:] for o in options]
            if stem.startswith("What appears right after "):
                truth = names[names.index(stem.removeprefix("What appears right after ").rstrip("?")) + 1]
            else:
                truth = names[names.index(stem.removeprefix("What appears right before ").rstrip("?")) - 1]
            assert truth in options
            # the judge keeps a right answer over a wrong one, and drops it the other way round
            wrong = next(o for o in options if o != truth)
            verdict = json.loads(judge(_judge_prompt(captions, q["question"], f"{truth}.", f"{wrong}.")))
            assert verdict == {"keep": True, "rule": None, "reason": verdict["reason"]}
            assert json.loads(judge(_judge_prompt(captions, q["question"], f"{wrong}.", f"{truth}.")))["rule"] == 2
            # a tie (both pick the truth) is dropped by rule 1 only as ties_dropped_too words it
            tie = (captions, q["question"], f"{truth}.", f"{truth}!")
            assert json.loads(judge(_judge_prompt(*tie, rule1="ties_dropped_too")))["rule"] == 1
            assert json.loads(judge(_judge_prompt(*tie, rule1="paper")))["keep"] is True
            checked += 1
    assert checked >= 60


def test_judge_drops_questions_the_captions_cannot_answer():
    events = short_events(random.Random(2), 3)
    captions = _captions(events)
    unknown = "What appears right after the purple square?\nA. x\nB. y\nAnswer with the option's letter."
    assert json.loads(judge(_judge_prompt(captions, unknown, "x", "y")))["rule"] == 3
    last = f"What appears right after {name(events[-1].colour)}?\nA. {name(events[0].colour)}\nB. y"
    assert json.loads(judge(_judge_prompt(captions, last, name(events[0].colour), "y")))["rule"] == 3


def test_toy_answers_read_back_through_the_evaluator():
    """The base model replies with the option's text; extract_choice maps it to the option."""
    rng = random.Random(3)
    for _ in range(50):
        events = long_events(rng)
        for q in [q for q, _ in moment_questions(events, rng)] + clip_questions(events, rng):
            assert extract_choice(answer_text(q), q["options"]) == q["answer"]
    assert describe(events).endswith(".") and describe(events)[0].isupper()


def test_parse_mcq_inverts_mcq_prompt():
    from tpo.evaluate.answers import mcq_prompt, parse_mcq

    options = ["the red square", "the blue circle", "left", "4"]
    assert parse_mcq(mcq_prompt("What appears right after the green circle?", options)) == (
        "What appears right after the green circle?", options)
