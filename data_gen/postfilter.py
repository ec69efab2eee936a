"""Stage 7: an LLM keeps or drops each pair by the paper's three rules (Sec. 2.2), with a reason."""

from __future__ import annotations

from string import Template

from data_gen.cache import Outcome
from data_gen.client import CallStats, ChatClient, json_schema, parse_json_object, user_message
from data_gen.config import ApiConfig, PostFilterConfig, fingerprint, prompt_template
from data_gen.items import Pair
from data_gen.runner import Job, StageRunner

# postfilter.rule1 -> (rule 1 as the prompt's $rule1 words it, its label in stats.json).
# The paper drops a pair when the dis-preferred answer is of *higher* quality; ties_dropped_too
# also drops pairs whose answers are equally good, which carry no preference.
RULE1 = {
    "paper": ("Answer B is of higher quality than answer A.", "dis-preferred answer is of higher quality"),
    "ties_dropped_too": ("Answer B is better than, or as good as, answer A.",
                         "dis-preferred answer is as good or better"),
}
OTHER_RULES = {
    2: "preferred answer is wrong or ungrounded",
    3: "question is ambiguous",
}

VERDICT_FORMAT = json_schema("verdict", {
    "keep": {"type": "boolean"},
    "rule": {"type": ["integer", "null"]},
    "reason": {"type": "string"},
})


def rule_labels(rule1: str) -> dict[int, str]:
    """Rule number -> what it drops, with rule 1 as ``postfilter.rule1`` words it."""
    return {1: RULE1[rule1][1], **OTHER_RULES}


def parse_verdict(text: str) -> dict:
    """``{kept, rule, reason}``; ValueError when the judge's reply does not say that clearly."""
    reply = parse_json_object(text)
    keep = reply.get("keep")
    if not isinstance(keep, bool):
        raise ValueError("'keep' must be true or false")
    rule = reply.get("rule")
    if isinstance(rule, str) and rule.strip().isdigit():
        rule = int(rule)
    if not keep and rule not in (1, *OTHER_RULES):
        raise ValueError(f"a dropped pair needs 'rule' 1, 2 or 3, got {rule!r}")
    reason = str(reply.get("reason") or "").strip()
    return {"kept": keep, "rule": None if keep else rule, "reason": reason}


def judge_prompt(template: str, rule1: str, *, captions: str, question: str, chosen: str, rejected: str) -> str:
    """The judge's prompt for one pair: the ``S_a`` captions, the question and the two answers."""
    return Template(template).substitute(rule1=RULE1[rule1][0], captions=captions, question=question,
                                         chosen=chosen, rejected=rejected)


def filter_jobs(pairs: list[Pair], cfg: PostFilterConfig) -> list[Job]:
    """One job per candidate pair; its key hashes the full prompt, so rule 1's wording is in it."""
    template = prompt_template(cfg.prompt)
    settings = {k: cfg[k] for k in ("model", "max_tokens", "temperature")}
    jobs = []
    for pair in pairs:
        prompt = judge_prompt(template, cfg.rule1, captions=pair.captions_text, question=pair.question.text,
                              chosen=pair.chosen, rejected=pair.rejected)
        jobs.append(Job(pair.id, fingerprint("postfilter", settings, prompt), prompt))
    return jobs


def run_postfilter(jobs: list[Job], cfg: PostFilterConfig, api: ApiConfig, stats: CallStats,
                   runner: StageRunner) -> None:
    if not cfg.enabled:
        for job in jobs:
            runner.outcomes[job.id] = Outcome(True, {"kept": True, "rule": None, "reason": "post-filter disabled"})
        return

    def make_call():
        client = ChatClient(api, cfg.base_url, cfg.model, stats, "postfilter")
        return lambda prompt: client.ask(user_message(prompt), parse_verdict, response_format=VERDICT_FORMAT,
                                         max_tokens=cfg.max_tokens, temperature=cfg.temperature)

    runner.run_calls(jobs, make_call, api.max_concurrency)
