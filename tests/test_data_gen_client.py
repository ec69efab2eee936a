"""The API client against a real local HTTP server: every fault kind recovered or recorded."""

import socket
import time
from string import Template
from types import SimpleNamespace

import pytest

from data_gen.client import (CallStats, ChatClient, EndpointUnreachable, FatalApiError, TransientFailure, parse_text,
                             retry_after_seconds)
from data_gen.config import ApiConfig, QuestionConfig, prompt_template
from data_gen.postfilter import parse_verdict
from data_gen.questions import parse_questions
from tpo.errors import ConfigError

TYPES = ["temporal order", "counting"]
MESSAGES = [{"role": "user", "content": Template(prompt_template(QuestionConfig.prompt)).substitute(
    captions="[0.0s] A red shape at the middle centre of a dark background.", num_questions=2,
    question_types=", ".join(TYPES))}]


def _client(server, **api):
    cfg = ApiConfig(**{"timeout_s": 0.5, "backoff_s": 0.01, "max_backoff_s": 0.2, "max_retries": 3,
                       "max_format_retries": 2, **api})
    stats = CallStats()
    return ChatClient(cfg, server.base_url, "scripted-llm", stats, "questions"), stats


def _ask(client):
    return client.ask(MESSAGES, lambda text: parse_questions(text, TYPES, 2), max_tokens=64)


def test_clean_call_parses_and_counts_tokens(scripted_server):
    client, stats = _client(scripted_server)
    outcome = _ask(client)
    assert outcome.ok and [q["type"] for q in outcome.value["questions"]] == ["temporal order", "counting"]
    assert outcome.usage["prompt_tokens"] > 0 and stats.as_dict() == {"questions/requests": 1}


@pytest.mark.parametrize("fault, cause", [("429", "429"), ("500", "5xx"), ("timeout", "timeout"),
                                          ("badbody", "bad_response")])
def test_transport_faults_are_retried(scripted_server, fault, cause):
    client, stats = _client(scripted_server)
    scripted_server.inject(fault, fault)
    outcome = _ask(client)
    assert outcome.ok
    assert stats.as_dict() == {"questions/requests": 3, f"questions/retries_{cause}": 2}


def test_retry_after_is_honoured(scripted_server):
    scripted_server.retry_after_s = 0.4
    client, stats = _client(scripted_server, backoff_s=0.001, max_backoff_s=1.0)
    scripted_server.inject("429")
    start = time.perf_counter()
    assert _ask(client).ok
    assert time.perf_counter() - start >= 0.4


def test_retry_after_header_forms():
    def err(headers):  # what retry_after_seconds reads of an openai.APIStatusError
        return SimpleNamespace(response=SimpleNamespace(headers=headers))
    assert retry_after_seconds(err({"retry-after": "2"})) == 2.0
    assert retry_after_seconds(err({"retry-after-ms": "250"})) == 0.25
    assert 0 <= retry_after_seconds(err({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) <= 1  # a past date: now
    assert retry_after_seconds(err({})) is None


def test_persistent_server_errors_become_a_transient_failure(scripted_server):
    client, stats = _client(scripted_server, max_retries=2)
    scripted_server.inject("500", "500", "500", "500")
    with pytest.raises(TransientFailure, match="5xx after 3 attempts"):
        _ask(client)


def test_malformed_output_is_re_asked_then_recorded_as_failure(scripted_server):
    client, stats = _client(scripted_server)
    scripted_server.inject("garbage")
    assert _ask(client).ok and stats.as_dict()["questions/retries_malformed"] == 1
    scripted_server.inject("garbage", "garbage", "garbage")
    outcome = _ask(client)
    assert not outcome.ok and "malformed output after 3 attempts" in outcome.reason


def test_unknown_model_stops_the_run(scripted_server):
    client, _ = _client(scripted_server)
    client.model = "no-such-model"
    with pytest.raises(FatalApiError, match="no-such-model"):
        _ask(client)


def test_missing_key_for_the_openai_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        ChatClient(ApiConfig(api_key_env="MY_KEY"), None, "gpt-4o-mini", CallStats(), "questions")


@pytest.mark.parametrize("reply, problem", [
    ("no json here", "no JSON object"),
    ('{"questions": []}', "non-empty list"),
    ('{"questions": [{"type": "temporal order"}]}', "no usable question: needs a non-empty 'question'"),
    ('{"questions": [{"type": "poetry", "question": "Why?"}]}', "no usable question: type 'poetry' is not one of"),
    ('{"questions": ["Why?", {"type": "counting", "question": ""}]}', r"expected \{type, question\}.*; needs a"),
    ('{"questions": [{"type": "counting", "question": "How many?"', "no JSON object"),
])
def test_replies_without_a_usable_question_are_malformed(reply, problem):
    with pytest.raises(ValueError, match=problem):
        parse_questions(reply, TYPES, 3)


def test_question_replies_are_normalised_and_every_drop_counted():
    reply = '```json\n{"questions": [{"type": "Counting", "question": " How  many? "}, ' \
            '{"type": "counting", "question": "How many?"}, {"type": "poetry", "question": "Why?"}, ' \
            '{"type": "temporal order", "question": "First?"}, {"type": "counting", "question": "Last?"}]}\n```'
    parsed = parse_questions(reply, TYPES, 2)
    assert parsed["questions"] == [{"type": "counting", "question": "How many?"},
                                   {"type": "temporal order", "question": "First?"}]
    assert [d["reason"] for d in parsed["dropped"]] == ["duplicate", "type not configured", "more than asked"]


def test_verdicts_are_validated():
    assert parse_verdict('{"keep": true, "rule": null, "reason": "fine"}') == {"kept": True, "rule": None, "reason": "fine"}
    assert parse_verdict('{"keep": false, "rule": "2", "reason": "wrong"}')["rule"] == 2
    with pytest.raises(ValueError, match="rule"):
        parse_verdict('{"keep": false, "reason": "?"}')
    with pytest.raises(ValueError, match="keep"):
        parse_verdict('{"keep": "yes"}')
    with pytest.raises(ValueError, match="empty"):
        parse_text("   ")


def test_an_endpoint_that_never_answers_is_unreachable():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        server = SimpleNamespace(base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
        with pytest.raises(EndpointUnreachable, match=rf"questions stage's endpoint {server.base_url} cannot be "
                                                      r"reached \(no answer within 0.5s\)"):
            _client(server)
