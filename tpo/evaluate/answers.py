"""The multiple-choice prompt and reading the chosen option back out of a model's reply."""

from __future__ import annotations

import re

from tpo.evaluate.benchmarks import LETTERS

POST_PROMPT = "Answer with the option's letter from the given choices directly."

# Lead-ins models put before the letter (lmms-eval strips the same kind of phrases).
_LEAD_INS = re.compile(
    r"^\s*(the\s+)?(best|correct|right|final)?\s*(answer|option|choice)\s*(is|:)?\s*(option|choice)?\s*[:\-]?\s*",
    re.IGNORECASE)


def mcq_prompt(question: str, options: list[str]) -> str:
    lines = [question] + [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join(lines + [POST_PROMPT])


def parse_mcq(prompt: str) -> tuple[str, list[str]]:
    """The question and the options back out of a :func:`mcq_prompt` text."""
    lines = prompt.strip().split("\n")
    return lines[0], [line[3:] for line in lines[1:] if re.match(r"^[A-Z]\. ", line)]


# "A is correct", "A because ...": a letter, not the article, when one of these words follows it
_AFTER_A_LETTER = {"is", "was", "because", "seems", "appears", "would", "should", "could", "since", "as", "fits",
                   "matches", "looks"}
# "Not B, the answer is A.": a stated answer anywhere in the reply wins over earlier letters
_STATED = re.compile(r"(?:answer|option|choice)\s*(?:is|:)\s*\(?([A-Z])(?![A-Za-z0-9])", re.IGNORECASE)


def _letter(text: str, valid: str) -> int | None:
    stated = [m.group(1).upper() for m in _STATED.finditer(text) if m.group(1).upper() in valid]
    if stated:
        return valid.index(stated[-1])
    for match in re.finditer(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])", text):
        letter = match.group(1)
        if letter not in valid:
            continue
        word = re.match(r" ([a-z]+)", text[match.end():])
        if letter in "AI" and word and word.group(1) not in _AFTER_A_LETTER:  # an English word, not a label
            continue
        return valid.index(letter)
    return None


def _mentioned(reply: str, options: list[str]) -> int | None:
    """The one option whose text (its final period optional) the reply holds."""
    texts = [option.lower().rstrip(".") for option in options]
    mentioned = [i for i, text in enumerate(texts) if text and text in reply.lower()]
    if len(mentioned) > 1:  # "red" inside "red square": keep only options no other one contains
        mentioned = [i for i in mentioned if not any(j != i and texts[i] in texts[j] for j in mentioned)]
    return mentioned[0] if len(mentioned) == 1 else None


def extract_choice(reply: str, options: list[str]) -> int | None:
    """The option a reply picks (``--reading tpo``): a stated answer ("the answer is B"), else the
    first standalone letter among the options' letters (not the article "A" of "A red square"),
    else the one option whose text the reply contains; ``None`` when it cannot tell. A reply with a
    reasoning block (``thinking`` on) is read after it."""
    reply = reply.rsplit("</think>", 1)[-1]
    text = _LEAD_INS.sub("", reply.strip(), count=1)
    choice = _letter(text, LETTERS[: len(options)])
    return choice if choice is not None else _mentioned(reply, options)
