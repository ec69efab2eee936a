"""The LLM stages (questions, post-filter) against the scripted server: the judge's rule-1 wording,
structured output and its prompt-only fallback, and replies with some bad questions."""

import json
from string import Template

import pytest
from omegaconf import OmegaConf

from data_gen.cache import ResultCache
from data_gen.client import CallStats
from data_gen.config import (ApiConfig, PostFilterConfig, QuestionConfig, load_config, prompt_template,
                             template_fields)
from data_gen.items import Pair, Question, Segment
from data_gen.postfilter import RULE1, filter_jobs, run_postfilter
from data_gen.questions import run_questions
from data_gen.runner import Job, StageRunner
from data_gen.scripted_server import ScriptedServer, write_questions
from tpo.errors import ConfigError

from data_gen_support import CONFIG, REPO

TYPES = ["temporal order", "counting"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "white", "orange", "cyan"]


def _api(**kwargs):
    return ApiConfig(**{"timeout_s": 10.0, "backoff_s": 0.01, "max_backoff_s": 0.1, "max_retries": 2, **kwargs})


def _runner(tmp_path, stage):
    return StageRunner(ResultCache(tmp_path / f"{stage}.sqlite"), stage, progress=False)


def _question_jobs():
    """One questions job per colour: distinct prompts the scripted LLM can answer."""
    template = Template(prompt_template(QuestionConfig.prompt))
    return [Job(colour, colour, template.substitute(
        captions=f"[0.0s] A {colour} shape at the middle centre of a dark background.", num_questions=2,
        question_types=", ".join(TYPES))) for colour in COLOURS]


def _ask_questions(server, tmp_path, concurrency=8):
    stats, runner = CallStats(), _runner(tmp_path, "questions")
    cfg = QuestionConfig(model="scripted-llm", base_url=server.base_url, per_segment=2, types=TYPES)
    run_questions(_question_jobs(), cfg, _api(max_concurrency=concurrency), stats, runner)
    return stats.as_dict(), runner


def _structured(server, model):
    """``[status, ...]`` of the requests to ``model`` that carried a response_format, in arrival order."""
    return [r["status"] for r in server.requests if r["model"] == model and r["response_format"] is not None]


# ---- post-filter rule 1 ---------------------------------------------------------------------------

def _pairs():
    segment = Segment("v.mp4::irrelevant-00", "v.mp4", "irrelevant", (0, 1), (0,), (1,))
    return [Pair(Question(f"p{i}", segment, "attribute", f"What colour is shape {i}?"), "Red.", "Blue.", False,
                 False, ({"frame": 0, "text": "A red shape."},),
                 "[0.0s] A red shape at the top left of a dark background.") for i in range(3)]


def _judge(**settings):
    return OmegaConf.structured(PostFilterConfig(model="scripted-judge", **settings))


@pytest.mark.parametrize("rule1", sorted(RULE1))
def test_rule1_wording_reaches_the_judge(scripted_server, tmp_path, rule1):
    cfg = _judge(base_url=scripted_server.base_url, rule1=rule1)
    runner = _runner(tmp_path, "postfilter")
    run_postfilter(filter_jobs(_pairs(), cfg), cfg, _api(), CallStats(), runner)
    assert all(o.ok for o in runner.outcomes.values()) and len(runner.outcomes) == 3
    prompts = [r["prompt"] for r in scripted_server.requests if r["model"] == "scripted-judge"]
    assert len(prompts) == 3
    (other,) = set(RULE1) - {rule1}
    for prompt in prompts:
        assert f"\n1. {RULE1[rule1][0]}\n" in prompt and RULE1[other][0] not in prompt


def test_rule1_wording_changes_the_cache_keys():
    keys = {rule1: [j.key for j in filter_jobs(_pairs(), _judge(rule1=rule1))] for rule1 in RULE1}
    assert not set(keys["paper"]) & set(keys["ties_dropped_too"])


def test_rule1_defaults_to_the_paper_and_is_checked(tmp_path):
    assert PostFilterConfig().rule1 == "paper"
    paper = load_config(str(REPO / "data_gen/configs/paper.yaml"), ["videos=v", "output_dir=o"])
    assert paper.postfilter.rule1 == "paper"
    with pytest.raises(ConfigError, match="postfilter.rule1 must be one of"):
        load_config(str(CONFIG), ["videos=v", "output_dir=o", "postfilter.rule1=strict"])


# ---- structured output ------------------------------------------------------------------------------

def test_structured_output_is_asked_for_and_honoured(scripted_server, tmp_path):
    stats, runner = _ask_questions(scripted_server, tmp_path)
    assert len(runner.outcomes) == 8 and all(o.ok for o in runner.outcomes.values())
    assert _structured(scripted_server, "scripted-llm") == [200] * 8  # the server checked each reply's schema
    schema = scripted_server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["questions"]["items"]["properties"]["type"]["enum"] == TYPES
    assert stats == {"questions/requests": 8}


def test_an_endpoint_without_structured_output_is_detected_once(tmp_path):
    """Eight threads at once: one request carries response_format and is refused; the others wait
    for that, and every item (the refused one re-asked) is answered prompt-only."""
    with ScriptedServer(response_format="reject", delay_s=0.05) as server:
        stats, runner = _ask_questions(server, tmp_path)
    with ScriptedServer() as honouring:
        _, reference = _ask_questions(honouring, tmp_path / "reference")
    assert _structured(server, "scripted-llm") == [400]
    assert server.requests[0]["response_format"] is not None  # the first request, before any other
    assert stats == {"questions/requests": 9, "questions/structured_output_unsupported": 1}
    assert not runner.transient and {k: o.value for k, o in runner.outcomes.items()} == \
        {k: o.value for k, o in reference.outcomes.items()}


def test_other_rejections_do_not_switch_structured_output_off(scripted_server, tmp_path):
    def refuse_red(request):  # an item the endpoint refuses for its own sake (400 not naming response_format)
        if "red shape" in request["messages"][0]["content"][-1]["text"]:
            raise ValueError("this prompt is refused")
        return write_questions(request)

    scripted_server.scripts["scripted-llm"] = refuse_red
    stats, runner = _ask_questions(scripted_server, tmp_path, concurrency=1)
    assert "request rejected (400)" in runner.outcomes["red"].reason
    assert sum(o.ok for o in runner.outcomes.values()) == 7 and "questions/structured_output_unsupported" not in stats
    assert _structured(scripted_server, "scripted-llm") == [400] + [200] * 7


# ---- replies with some bad questions -------------------------------------------------------------------

def _with_bad_questions(request):
    reply = json.loads(write_questions(request))
    reply["questions"][1:1] = [{"type": "poetry", "question": "Why?"}, {"type": "counting", "question": " "}, "Huh?"]
    return json.dumps(reply)


def test_bad_questions_are_dropped_and_counted_not_re_asked(tmp_path):
    with ScriptedServer(response_format="reject") as server:  # prompt-only: the reply is not held to the schema
        server.scripts["scripted-llm"] = _with_bad_questions
        stats, runner = _ask_questions(server, tmp_path, concurrency=1)
    assert stats == {"questions/requests": 9, "questions/structured_output_unsupported": 1}  # no re-ask
    for outcome in runner.outcomes.values():
        assert outcome.ok and len(outcome.value["questions"]) == 2
        assert [d["reason"] for d in outcome.value["dropped"]] == ["type not configured", "no question text",
                                                                   "not an object"]
        assert "'poetry' is not one of" in outcome.value["dropped"][0]["detail"]


def test_the_honouring_server_holds_replies_to_the_schema(scripted_server, tmp_path):
    """(So the honoured runs above show the schema sent is a valid one the scripts' replies fit.)"""
    scripted_server.scripts["scripted-llm"] = _with_bad_questions
    stats, runner = _ask_questions(scripted_server, tmp_path, concurrency=1)
    assert len(runner.transient) == 8 and stats["questions/retries_5xx"] == 16
    assert {r["status"] for r in scripted_server.requests} == {500}


def test_the_test_servers_follow_a_reworded_prompt(tmp_path, monkeypatch):
    """The scripted LLM reads what data_gen filled into the template, not the template's phrases."""
    import data_gen.config

    reworded = "Captions, in order:\n$captions\nPlease ask $num_questions questions of types [$question_types]."
    (tmp_path / "questions.txt").write_text(reworded)
    monkeypatch.setattr(data_gen.config, "PROMPT_DIR", tmp_path)
    prompt = Template(reworded).substitute(captions="[0.5s] A red shape at the top left of a dark background.",
                                           num_questions=2, question_types="temporal order, action")
    questions = json.loads(write_questions({"messages": [{"role": "user", "content": prompt}]}))["questions"]
    assert [q["type"] for q in questions] == ["temporal order", "action"] and "red" in questions[1]["question"]
    assert template_fields("Is $a then $b, then $a?", "Is x then y, then x?") == {"a": "x", "b": "y"}
    assert template_fields("Is $a then $b?", "Was x then y?") is None
