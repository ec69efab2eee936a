"""Chat calls to an OpenAI-compatible endpoint: retries, backoff, output validation, accounting.

The ``openai`` client's own retries are switched off so that every retry is ours: counted,
bounded by ``api.max_retries``, spaced by exponential backoff or the server's ``Retry-After``.

Stages that want JSON pass a ``response_format`` (a JSON schema, OpenAI's structured output, which
vLLM serves too). An endpoint that rejects it is asked prompt-only from then on: the prompt asks
for JSON and the stage's parser finds and validates it, as it does for every reply.

A client is made only by a stage with calls to make, and first asks the endpoint for ``/models``: an
endpoint that cannot be reached at all (connection refused, unknown host, no answer) stops the run
with one line naming it, instead of every item failing as transient. Any HTTP answer, an error status
included, counts as reachable: some servers have no ``/models``, and a bad key or model is reported by
the first call.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter
from email.utils import parsedate_to_datetime
from typing import Callable

import openai

from data_gen.cache import Outcome
from data_gen.config import ApiConfig, masked
from tpo.errors import ConfigError, TPOError


class TransientFailure(RuntimeError):
    """Retries ran out on 429 / 5xx / timeouts: not cached, so a rerun tries the item again."""


class FatalApiError(TPOError):
    """Bad key, unknown model or endpoint: no item can succeed, so the run stops."""


class EndpointUnreachable(FatalApiError):
    """No connection to the endpoint at all: not transient, so the run stops before its first call."""


PROBE_TIMEOUT_S = 10.0  # at most: api.timeout_s when shorter


class CallStats:
    """Thread-safe counters for one run: calls, retries by cause, tokens."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()

    def add(self, **amounts: int) -> None:
        with self._lock:
            self.counts.update(amounts)

    def as_dict(self) -> dict:
        with self._lock:
            return dict(sorted(self.counts.items()))


def api_key(api: ApiConfig, base_url: str | None) -> str:
    """The key from ``$<api.api_key_env>``; local servers (``base_url`` set) may go without one."""
    key = os.environ.get(api.api_key_env)
    if key:
        return key
    if base_url is None:
        raise ConfigError(f"environment variable {api.api_key_env} is not set: it must hold the API key "
                          "(or set api.base_url to a server that needs none)")
    return "EMPTY"


def retry_after_seconds(err: openai.APIStatusError) -> float | None:
    headers = err.response.headers
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _retry_cause(err: Exception) -> str | None:
    """Why a failed request is worth retrying (``None``: it is not)."""
    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    if isinstance(err, openai.RateLimitError):
        return "429"
    if isinstance(err, openai.APIStatusError) and err.status_code >= 500:
        return "5xx"
    return None


def _unreachable_reason(err: openai.APIConnectionError, timeout_s: float) -> str:
    """What the connection error says, as "connection refused" or "name or service not known"."""
    if isinstance(err, openai.APITimeoutError):
        return f"no answer within {timeout_s:g}s"
    cause = err
    while cause is not None:  # openai's error <- httpx's <- httpcore's <- the socket's OSError
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return "connection failed"


def _rejects_response_format(err: openai.APIStatusError) -> bool:
    """A 400 / 422 that names ``response_format`` or its schema: no structured output here."""
    text = f"{err.message} {err.body}".lower()
    return err.status_code in (400, 422) and any(
        word in text for word in ("response_format", "json_schema", "json schema", "structured output"))


class ChatClient:
    """One endpoint + model; ``ask`` returns an :class:`Outcome` with the parsed answer.

    One client serves all the threads of a stage, so what it learns about the endpoint (whether
    it takes ``response_format``) holds for the whole stage. Making one checks that the endpoint
    can be reached (:class:`EndpointUnreachable` if not).
    """

    def __init__(self, api: ApiConfig, base_url: str | None, model: str, stats: CallStats, stage: str):
        self.api, self.model, self.stats, self.stage = api, model, stats, stage
        self.client = openai.OpenAI(api_key=api_key(api, base_url), base_url=base_url,
                                    timeout=api.timeout_s, max_retries=0)
        self.structured: bool | None = None  # does the endpoint take response_format? None: not known yet
        self._structured_lock = threading.RLock()
        self._check_reachable()

    def _check_reachable(self) -> None:
        """Raise :class:`EndpointUnreachable` if ``GET /models`` gets no HTTP answer at all."""
        timeout = min(self.api.timeout_s, PROBE_TIMEOUT_S)
        try:
            self.client.with_options(timeout=timeout).models.list()
        except openai.APIConnectionError as err:
            url = masked(str(self.client.base_url).rstrip("/"))
            raise EndpointUnreachable(
                f"the {self.stage} stage's endpoint {url} cannot be reached ({_unreachable_reason(err, timeout)}); "
                f"start the server or set api.base_url (or {self.stage}.base_url)") from None
        except (openai.APIError, ValueError):  # an answer, even an error or a body that is not JSON: reachable
            pass

    def _complete(self, messages: list[dict], **params) -> tuple[str, dict, bool]:
        """``(text, token usage, cut)``: ``cut`` when the reply stopped at ``max_tokens``."""
        for attempt in range(self.api.max_retries + 1):
            try:
                self.stats.add(**{f"{self.stage}/requests": 1})
                response = self.client.chat.completions.create(model=self.model, messages=messages, **params)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
                raise FatalApiError(f"{self.stage}: the endpoint refused model {self.model!r}: {err.message}") from None
            except (openai.APIError, json.JSONDecodeError) as err:  # a non-JSON body raises JSONDecodeError
                cause = "bad_response" if isinstance(err, json.JSONDecodeError) else _retry_cause(err)
                if cause is None:
                    raise
                if attempt == self.api.max_retries:
                    raise TransientFailure(f"{cause} after {attempt + 1} attempts") from None
                self.stats.add(**{f"{self.stage}/retries_{cause}": 1})
                wait = retry_after_seconds(err) if isinstance(err, openai.APIStatusError) else None
                if wait is None:
                    wait = self.api.backoff_s * 2 ** attempt * random.uniform(0.5, 1.0)
                time.sleep(min(wait, self.api.max_backoff_s))
                continue
            usage = response.usage
            tokens = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens} if usage else {}
            if not response.choices:
                return "", tokens, False
            choice = response.choices[0]
            return choice.message.content or "", tokens, choice.finish_reason == "length"
        raise AssertionError("unreachable")

    def _complete_json(self, messages: list[dict], response_format: dict, params: dict) -> tuple[str, dict, bool]:
        """``_complete``, asking for ``response_format`` unless the endpoint has refused it.

        The first such request settles whether it takes it while the stage's other threads wait,
        so an endpoint that does not is sent exactly one request with ``response_format``.
        """
        if self.structured is None:
            with self._structured_lock:
                if self.structured is None:
                    reply = self._try_structured(messages, response_format, params)
                    self.structured = reply is not None
                    if reply is not None:
                        return reply
        if self.structured:
            reply = self._try_structured(messages, response_format, params)
            if reply is not None:
                return reply
        return self._complete(messages, **params)  # a rejected item is re-asked here: not a failure

    def _try_structured(self, messages: list[dict], response_format: dict,
                        params: dict) -> tuple[str, dict, bool] | None:
        """The reply to a request with ``response_format``; ``None`` if the endpoint rejects that
        (then prompt-only from now on, counted once)."""
        try:
            return self._complete(messages, response_format=response_format, **params)
        except openai.APIStatusError as err:
            if not _rejects_response_format(err):
                raise
        with self._structured_lock:
            if self.structured is not False:
                self.structured = False
                self.stats.add(**{f"{self.stage}/structured_output_unsupported": 1})
        return None

    def ask(self, messages: list[dict], parse: Callable[[str], object], response_format: dict | None = None,
            mark_truncated: bool = False, **params) -> Outcome:
        """Call, parse; re-ask on malformed output up to ``api.max_format_retries`` times.

        ``response_format`` (see :func:`json_schema`) is sent while the endpoint takes it; ``parse``
        validates every reply all the same. ``mark_truncated``: the value is ``{"text": parsed,
        "truncated": the reply stopped at max_tokens}``.
        """
        usage: Counter = Counter()
        problem = ""
        for attempt in range(self.api.max_format_retries + 1):
            try:
                text, tokens, cut = (self._complete(messages, **params) if response_format is None
                                     else self._complete_json(messages, response_format, params))
            except openai.APIStatusError as err:  # 400, 409, 422...: this request will not succeed
                return Outcome(False, reason=f"request rejected ({err.status_code}): {err.message}"[:300],
                               usage=dict(usage))
            usage.update(tokens)
            try:
                value = {"text": parse(text), "truncated": cut} if mark_truncated else parse(text)
                return Outcome(True, value, usage=dict(usage))
            except ValueError as err:
                problem = f"{err} (output: {text[:200]!r})"
                if attempt < self.api.max_format_retries:
                    self.stats.add(**{f"{self.stage}/retries_malformed": 1})
        return Outcome(False, reason=f"malformed output after {self.api.max_format_retries + 1} attempts: {problem}",
                       usage=dict(usage))


# ---- message building and output parsing -------------------------------------------------------

def user_message(text: str, image_urls: list[str] = ()) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]


def strict_object(properties: dict) -> dict:
    """A JSON schema for an object with exactly ``properties``, all required (as OpenAI's strict
    mode wants; a type ``["integer", "null"]`` stands for an optional value)."""
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def json_schema(name: str, properties: dict) -> dict:
    """A ``response_format`` asking for a :func:`strict_object` reply."""
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": strict_object(properties)}}


def parse_json_object(text: str) -> dict:
    """The JSON object in a model's reply (fenced in ``` or not); ValueError if there is none."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the reply")
    try:
        value = json.loads(body[start:end + 1])
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise ValueError("the reply's JSON is not an object")
    return value


def parse_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("empty reply")
    return text
