"""Stage 5: an LLM writes questions of several types from the captions of each ``S_a``."""

from __future__ import annotations

from functools import partial
from string import Template

from data_gen.client import CallStats, ChatClient, parse_json_object, user_message
from data_gen.config import ApiConfig, QuestionConfig, fingerprint, prompt_template
from data_gen.manipulate import Segment
from data_gen.runner import Job, StageRunner


def format_captions(captions: list[dict], fps: float) -> str:
    """One line per frame: ``[12.5s] a red square moves left``."""
    def stamp(frame: int) -> str:
        return f"{frame / fps:.1f}s" if fps > 0 else f"frame {frame}"
    return "\n".join(f"[{stamp(c['frame'])}] {c['text']}" for c in captions)


def parse_questions(text: str, types: list[str], limit: int) -> list[dict]:
    """``[{type, question}, ...]`` from the LLM's JSON; ValueError when it is not usable."""
    reply = parse_json_object(text)
    items = reply.get("questions")
    if not isinstance(items, list) or not items:
        raise ValueError("'questions' must be a non-empty list")
    known = {t.lower(): t for t in types}
    questions, seen = [], set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise ValueError(f"each question needs a non-empty 'question' string, got {item!r}"[:200])
        qtype = str(item.get("type", "")).strip().lower()
        if qtype not in known:
            raise ValueError(f"question type {item.get('type')!r} is not one of {types}")
        # whitespace tidied line by line: a multiple-choice question keeps one option per line
        question = "\n".join(" ".join(line.split()) for line in item["question"].splitlines() if line.strip())
        if question.lower() not in seen:
            seen.add(question.lower())
            questions.append({"type": known[qtype], "question": question})
    return questions[:limit]


def question_jobs(segments: list[Segment], captions: dict[str, list[dict]], fps: dict[str, float],
                  cfg: QuestionConfig) -> list[Job]:
    """One job per segment whose ``S_a`` is fully captioned (``captions[segment.id]``)."""
    template = prompt_template(cfg.prompt)
    settings = {k: cfg[k] for k in ("model", "per_segment", "types", "max_tokens", "temperature")}
    jobs = []
    for seg in segments:
        if seg.id not in captions:
            continue
        prompt = Template(template).substitute(
            captions=format_captions(captions[seg.id], fps[seg.video]), num_questions=cfg.per_segment,
            question_types=", ".join(cfg.types))
        jobs.append(Job(seg.id, fingerprint("questions", settings, prompt), (prompt,)))
    return jobs


def run_questions(jobs: list[Job], cfg: QuestionConfig, api: ApiConfig, stats: CallStats, runner: StageRunner) -> None:
    def make_call():
        client = ChatClient(api, cfg.base_url, cfg.model, stats, "questions")
        parse = partial(parse_questions, types=list(cfg.types), limit=cfg.per_segment)
        return lambda prompt: client.ask(user_message(prompt), parse, max_tokens=cfg.max_tokens,
                                         temperature=cfg.temperature)

    runner.run_calls(jobs, make_call, api.max_concurrency)
