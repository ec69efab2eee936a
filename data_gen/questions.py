"""Stage 5: an LLM writes questions of several types from the captions of each ``S_a``."""

from __future__ import annotations

from functools import partial
from string import Template

from data_gen.client import CallStats, ChatClient, json_schema, parse_json_object, strict_object, user_message
from data_gen.config import ApiConfig, QuestionConfig, fingerprint, prompt_template
from data_gen.items import Segment
from data_gen.runner import Job, StageRunner


def format_captions(captions: list[dict], fps: float) -> str:
    """One line per frame: ``[12.5s] a red square moves left``."""
    def stamp(frame: int) -> str:
        return f"{frame / fps:.1f}s" if fps > 0 else f"frame {frame}"
    return "\n".join(f"[{stamp(c['frame'])}] {c['text']}" for c in captions)


def questions_format(types: list[str]) -> dict:
    """The ``response_format`` of a questions reply: ``{"questions": [{type, question}, ...]}``."""
    item = strict_object({"type": {"type": "string", "enum": list(types)}, "question": {"type": "string"}})
    return json_schema("questions", {"questions": {"type": "array", "items": item}})


def _tidy(question: str) -> str:
    # whitespace tidied line by line: a multiple-choice question keeps one option per line
    return "\n".join(" ".join(line.split()) for line in question.splitlines() if line.strip())


def _unusable(item, known: dict[str, str]) -> tuple[str, str] | None:
    """``(reason, detail)`` when one question of a reply cannot be used, else ``None``."""
    if not isinstance(item, dict):
        return "not an object", f"expected {{type, question}}, got {item!r}"[:200]
    if not isinstance(item.get("question"), str) or not item["question"].strip():
        return "no question text", f"needs a non-empty 'question' string, got {item!r}"[:200]
    if str(item.get("type", "")).strip().lower() not in known:
        return "type not configured", f"type {item.get('type')!r} is not one of {list(known.values())}"[:200]
    return None


def parse_questions(text: str, types: list[str], limit: int) -> dict:
    """``{"questions": [{type, question}, ...], "dropped": [{reason, detail}, ...]}`` from the
    LLM's JSON. A bad question is dropped, with its reason; the reply is unusable (ValueError,
    so re-asked) only when it holds no usable question at all."""
    items = parse_json_object(text).get("questions")
    if not isinstance(items, list) or not items:
        raise ValueError("'questions' must be a non-empty list")
    known = {t.lower(): t for t in types}
    questions, dropped, seen = [], [], set()
    for item in items:
        problem = _unusable(item, known)
        if problem is None:
            question = _tidy(item["question"])
            if question.lower() in seen:
                problem = "duplicate", f"{question!r} is asked twice"[:200]
            elif len(questions) == limit:
                problem = "more than asked", f"only {limit} asked for, {question!r} is one more"[:200]
        if problem is not None:
            dropped.append({"reason": problem[0], "detail": problem[1]})
            continue
        seen.add(question.lower())
        questions.append({"type": known[str(item["type"]).strip().lower()], "question": question})
    if not questions:
        raise ValueError("no usable question: " + "; ".join(d["detail"] for d in dropped))
    return {"questions": questions, "dropped": dropped}


# In the cache key: 2 since a bad question drops alone (replies cached as failures by 1 are asked again).
PARSER_VERSION = 2


def question_jobs(segments: list[Segment], captions: dict[str, list[dict]], fps: dict[str, float],
                  cfg: QuestionConfig) -> list[Job]:
    """One job per segment whose ``S_a`` is fully captioned (``captions[segment.id]``)."""
    template = prompt_template(cfg.prompt)
    settings = {k: cfg[k] for k in ("model", "per_segment", "types", "max_tokens", "temperature")}
    settings["parser"] = PARSER_VERSION
    jobs = []
    for seg in segments:
        if seg.id not in captions:
            continue
        prompt = Template(template).substitute(
            captions=format_captions(captions[seg.id], fps[seg.video]), num_questions=cfg.per_segment,
            question_types=", ".join(cfg.types))
        jobs.append(Job(seg.id, fingerprint("questions", settings, prompt), prompt))
    return jobs


def run_questions(jobs: list[Job], cfg: QuestionConfig, api: ApiConfig, stats: CallStats, runner: StageRunner) -> None:
    def make_call():
        client = ChatClient(api, cfg.base_url, cfg.model, stats, "questions")
        parse = partial(parse_questions, types=list(cfg.types), limit=cfg.per_segment)
        response_format = questions_format(list(cfg.types))
        return lambda prompt: client.ask(user_message(prompt), parse, response_format=response_format,
                                         max_tokens=cfg.max_tokens, temperature=cfg.temperature)

    runner.run_calls(jobs, make_call, api.max_concurrency)
