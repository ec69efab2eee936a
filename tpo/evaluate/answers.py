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


def extract_choice(reply: str, options: list[str]) -> int | None:
    """The option a reply picks: the first standalone letter among the options' letters (not the
    article "A" of "A red square"), else the one option whose text the reply contains; ``None``
    when it cannot tell."""
    text = _LEAD_INS.sub("", reply.strip(), count=1)
    valid = LETTERS[: len(options)]
    for match in re.finditer(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])", text):
        letter = match.group(1)
        if letter not in valid:
            continue
        rest = text[match.end():]
        if letter in "AI" and re.match(r" [a-z]", rest):  # an English word, not an option label
            continue
        return valid.index(letter)
    mentioned = [i for i, option in enumerate(options) if option and option.lower() in reply.lower()]
    if len(mentioned) > 1:  # "red" inside "red square": keep only options no other one contains
        mentioned = [i for i in mentioned
                     if not any(j != i and options[i].lower() in options[j].lower() for j in mentioned)]
    return mentioned[0] if len(mentioned) == 1 else None
