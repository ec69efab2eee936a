"""After the post-filter, the SFT_LLM baseline's answers: the LLM answers each pair's question from the captions of its ``S_a``.

The paper's other baseline (§3.2, Table 2: "SFT_LLM ... We employ LLM (GPT-4o-mini) to generate responses
given the query and the video captions ... We use the same video data as TPO"). Every pair is asked, kept by the
post-filter or not: the answer depends only on the question and its captions (the same text the question writer
and the judge read), so changing or switching off the post-filter makes no new call; the pipeline writes the
answers of the kept pairs, beside their records, to ``preferences_sft_llm.jsonl``.
"""

from __future__ import annotations

from string import Template

from data_gen.client import CallStats, ChatClient, parse_text, user_message
from data_gen.config import ApiConfig, SftLlmConfig, fingerprint, prompt_template
from data_gen.items import Pair
from data_gen.runner import Job, StageRunner


def sft_prompt(template: str, *, captions: str, question: str) -> str:
    return Template(template).substitute(captions=captions, question=question)


def sft_jobs(pairs: list[Pair], cfg: SftLlmConfig) -> list[Job]:
    """One job per pair (by its id, the question's); none when the stage is off. The key hashes the model's
    settings and the full prompt, not the endpoint."""
    if not cfg.enabled:
        return []
    template = prompt_template(cfg.prompt)
    settings = {k: cfg[k] for k in ("model", "max_tokens", "temperature")}
    jobs = []
    for pair in pairs:
        prompt = sft_prompt(template, captions=pair.captions_text, question=pair.question.text)
        jobs.append(Job(pair.id, fingerprint("sft_llm", settings, prompt), prompt))
    return jobs


def run_sft_llm(jobs: list[Job], cfg: SftLlmConfig, api: ApiConfig, stats: CallStats, runner: StageRunner) -> None:
    """Each job's answer as ``{text, truncated}`` (an empty reply is malformed: re-asked, then a failure)."""
    def make_call():
        client = ChatClient(api, cfg.base_url, cfg.model, stats, "sft_llm")
        return lambda prompt: client.ask(user_message(prompt), parse_text, mark_truncated=True,
                                         max_tokens=cfg.max_tokens, temperature=cfg.temperature)

    runner.run_calls(jobs, make_call, api.max_concurrency)
