"""Stage 7: an LLM keeps or drops each pair by the paper's three rules (Sec. 2.2), with a reason."""

from __future__ import annotations

from string import Template

from data_gen.cache import Outcome
from data_gen.client import CallStats, ChatClient, parse_json_object, user_message
from data_gen.config import ApiConfig, PostFilterConfig, fingerprint, prompt_template
from data_gen.runner import Job, StageRunner

RULES = {
    1: "dis-preferred answer is better",
    2: "preferred answer is wrong or ungrounded",
    3: "question is ambiguous",
}


def parse_verdict(text: str) -> dict:
    """``{kept, rule, reason}``; ValueError when the judge's reply does not say that clearly."""
    reply = parse_json_object(text)
    keep = reply.get("keep")
    if not isinstance(keep, bool):
        raise ValueError("'keep' must be true or false")
    rule = reply.get("rule")
    if isinstance(rule, str) and rule.strip().isdigit():
        rule = int(rule)
    if not keep and rule not in RULES:
        raise ValueError(f"a dropped pair needs 'rule' 1, 2 or 3, got {rule!r}")
    reason = str(reply.get("reason") or "").strip()
    return {"kept": keep, "rule": None if keep else rule, "reason": reason}


def filter_jobs(pairs: list[dict], cfg: PostFilterConfig) -> list[Job]:
    """One job per candidate pair (``pair`` holds id, captions text, question, chosen, rejected)."""
    template = Template(prompt_template(cfg.prompt))
    settings = {k: cfg[k] for k in ("model", "max_tokens", "temperature")}
    jobs = []
    for pair in pairs:
        prompt = template.substitute(captions=pair["captions_text"], question=pair["question"],
                                     chosen=pair["chosen"], rejected=pair["rejected"])
        jobs.append(Job(pair["id"], fingerprint("postfilter", settings, prompt), (prompt,)))
    return jobs


def run_postfilter(jobs: list[Job], cfg: PostFilterConfig, api: ApiConfig, stats: CallStats,
                   runner: StageRunner) -> None:
    if not cfg.enabled:
        for job in jobs:
            runner.outcomes[job.id] = Outcome(True, {"kept": True, "rule": None, "reason": "post-filter disabled"})
        return

    def make_call():
        client = ChatClient(api, cfg.base_url, cfg.model, stats, "postfilter")
        return lambda prompt: client.ask(user_message(prompt), parse_verdict, max_tokens=cfg.max_tokens,
                                         temperature=cfg.temperature)

    runner.run_calls(jobs, make_call, api.max_concurrency)
