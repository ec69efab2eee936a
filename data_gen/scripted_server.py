"""A scripted OpenAI-compatible chat server for tests and the offline demo.

It speaks the real protocol (``POST /v1/chat/completions`` over HTTP) and answers according to
the requested ``model``, with scripts that read the synthetic world of ``tpo.synthetic``:

- ``scripted-captioner``: looks at the JPEG it is sent and names the shape's colour and place;
- ``scripted-llm``: writes questions from the captions in the prompt (JSON, as asked);
- ``scripted-judge``: a deterministic post-filter verdict;
- ``scripted-sft-llm``: answers a question from the captions in the prompt (the SFT_LLM baseline's answers);
- ``scripted-vlm``: answers a question about the one video it is sent (``video_url``,
  ``data:video/jpeg;base64,<frame>,...`` as vLLM reads it), naming what it sees frame by frame, in
  order; images, or a video of another content type, are refused with a 400;
- ``scripted-times-<family>``: answers with the times ``family``'s processor computes for the one video it
  is sent (Qwen3-VL and Qwen3.5's ``<t seconds>``, GLM-4.1V's whole seconds, Gemma 4's ``mm:ss``,
  Qwen2.5-VL's seconds per temporal patch), as JSON.

A video is read as vLLM 0.34 reads a ``data:video/jpeg`` one (:mod:`data_gen.scripted_video`); per-request
``media_io_kwargs`` and ``mm_processor_kwargs`` are refused unless ``trust_request_mm_kwargs``, and
``honour_media_io_kwargs=False`` plays a server that ignores the request's.

``scripts`` adds more models (the toy reproduction serves its toy LLM this way: ``toy.llm.toy_server``).

Faults can be injected: ``inject("429", "500", "timeout", "garbage", "badbody")`` makes the
next requests fail that way, in arrival order; ``fault_rate`` fails a random share of them.
A request's ``response_format`` (a JSON schema) is honoured, like OpenAI and vLLM do (the reply is
checked against the schema), or, with ``response_format="reject"``, refused with a 400 like an
endpoint without structured output. Every chat request is logged in ``requests``.
Run it standalone: ``python -m data_gen.scripted_server --port 8000 --fault-rate 0.1``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import random
import re
import threading
import time
from collections import Counter
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from data_gen.config import QuestionConfig, SftLlmConfig, prompt_template, template_fields
from data_gen.scripted_video import (FRAME_TIMES, UNTRUSTED, VIDEO_TOKENS_PER_FRAME, frame_times,
                                     jpeg_video_metadata, video_io_kwargs)
from tpo.clean_exit import run_and_exit
from tpo.models.served import video_frames
from tpo.synthetic.world import find_object, place

FAULTS = ("429", "500", "timeout", "garbage", "badbody")
RESPONSE_FORMAT_MODES = ("honour", "reject")
# what OpenAI answers when a model does not take the parameter
_UNSUPPORTED = {"error": {"message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported "
                                     "with this model.", "type": "invalid_request_error",
                          "param": "response_format", "code": None}}


# ---- the scripts ---------------------------------------------------------------------------------

def prompt_text(request: dict) -> str:
    parts = []
    for message in request["messages"]:
        content = message["content"]
        parts += [content] if isinstance(content, str) else [c["text"] for c in content if c["type"] == "text"]
    return "\n".join(parts)


def _images(request: dict) -> list[np.ndarray]:
    from PIL import Image

    urls = [c["image_url"]["url"] for m in request["messages"] if isinstance(m["content"], list)
            for c in m["content"] if c["type"] == "image_url"]
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB")) for u in urls]


def _videos(request: dict) -> list[list[np.ndarray]]:
    return [video_frames(c["video_url"]["url"]) for m in request["messages"] if isinstance(m["content"], list)
            for c in m["content"] if c["type"] == "video_url"]


def _frame_counts(request: dict) -> list[int] | None:
    """How many frames each video of a request holds (logged for the tests; ``None``: unreadable)."""
    try:
        return [len(frames) for frames in _videos(request)]
    except ValueError:
        return None


def describe_image(image: np.ndarray) -> str:
    """The colour and place of the brightest object in a synthetic-world frame."""
    found = find_object(image)
    if found is None:
        return "An empty dark frame."
    colour, mask = found
    return f"A {colour} shape at the {place(mask)} of a dark background."


def one_image(request: dict) -> np.ndarray:
    images = _images(request)
    if len(images) != 1:
        raise ValueError(f"the captioner expects exactly one image, got {len(images)}")
    return images[0]


def caption(request: dict) -> str:
    return describe_image(one_image(request))


def template_values(template: str, prompt: str) -> dict[str, str]:
    """What data_gen filled ``template`` (a file of ``data_gen/prompts/``) with, read back from the
    prompt it sent: the test servers follow an edited prompt's wording."""
    fields = template_fields(prompt_template(template), prompt)
    if fields is None:
        raise ValueError(f"the prompt is not data_gen's {template} filled in")
    return fields


def caption_lines(captions: str) -> list[tuple[str, str]]:
    """``(time, text)`` of each line ``data_gen.questions.format_captions`` wrote."""
    return re.findall(r"^\[([^\]]+)\] (.+)$", captions, re.MULTILINE)


def _colours(captions: str) -> list[str]:
    """The shape's colour in each caption line (``scripted-captioner``'s words), in order."""
    return [re.search(r"A (\w+) shape", text).group(1) for _, text in caption_lines(captions) if "shape" in text]


def write_questions(request: dict) -> str:
    fields = template_values(QuestionConfig.prompt, prompt_text(request))
    count = int(fields["num_questions"])
    types = [t.strip() for t in fields["question_types"].split(",")]
    colours = _colours(fields["captions"])
    first, last = (colours[0], colours[-1]) if colours else ("no", "no")
    candidates = [
        ("temporal order", "What colour is the shape at the start of the video?"),
        ("attribute", "Which colours does the shape have during the video?"),
        ("counting", "How many times does the shape change colour?"),
        ("action", f"Where does the {first} shape move?"),
        ("object presence", f"Is there a {last} shape in the video?"),
        ("temporal order", "What colour is the shape at the end of the video?"),
    ]
    picked = [c for c in candidates if c[0] in types][:count] or candidates[:count]
    return json.dumps({"questions": [{"type": t, "question": q} for t, q in picked]})


def answer_from_captions(request: dict) -> str:
    """An answer to the question of an SFT_LLM prompt, read from its captions (``write_questions``' kinds)."""
    fields = template_values(SftLlmConfig.prompt, prompt_text(request))
    question, colours = fields["question"], _colours(fields["captions"])
    places = re.findall(r"shape at the (.+?) of ", fields["captions"])
    if not colours:
        return "The video shows no shape."
    changes = sum(a != b for a, b in zip(colours, colours[1:]))
    present = re.search(r"Is there an? (\w+) shape", question)
    if present:
        return f"{'Yes' if present.group(1) in colours else 'No'}, the shape is {' then '.join(dict.fromkeys(colours))}."
    if "start" in question or "end" in question:
        return f"The shape is {colours[0] if 'start' in question else colours[-1]}."
    if question.startswith("How many"):
        return f"The shape changes colour {changes} time{'s' * (changes != 1)}."
    if question.startswith("Where") and places:
        return f"It moves from the {places[0]} to the {places[-1]}."
    return f"The shape is {', then '.join(dict.fromkeys(colours))}."


def judge(request: dict) -> str:
    prompt = prompt_text(request)
    digest = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10
    if digest < 3:
        return json.dumps({"keep": False, "rule": digest + 1, "reason": f"scripted drop by rule {digest + 1}"})
    return json.dumps({"keep": True, "rule": None, "reason": "the preferred answer matches the captions"})


def _limited(content: str, max_tokens: int | None) -> tuple[str, str]:
    """A reply cut at ``max_tokens`` (a word is a token here) and its ``finish_reason``, as servers do."""
    words = content.split(" ")
    if max_tokens is None or len(words) <= max_tokens:
        return content, "stop"
    return " ".join(words[:max_tokens]), "length"


def answer(request: dict) -> str:
    videos = [frames for frames, _ in request["vllm_videos"]]
    if _images(request) or len(videos) != 1:
        raise ValueError(f"scripted-vlm answers about one video_url; got {len(videos)} video(s) and "
                         f"{len(_images(request))} image(s)")
    colours = []
    for image in videos[0]:
        name = describe_image(image).split()[1]
        if not colours or colours[-1] != name:
            colours.append(name)
    return "I see " + ", then ".join(colours) + "."


SCRIPTS = {"scripted-captioner": caption, "scripted-llm": write_questions, "scripted-judge": judge,
           "scripted-sft-llm": answer_from_captions, "scripted-vlm": answer, **{f"scripted-times-{f}": partial(frame_times, f) for f in FRAME_TIMES}}


def _breaks_schema(content: str, response_format: dict) -> str | None:
    """How a scripted reply breaks the requested ``json_schema`` response format, or ``None``."""
    import jsonschema

    if response_format.get("type") != "json_schema":
        return f"unknown response_format type {response_format.get('type')!r}"
    try:
        jsonschema.validate(json.loads(content), response_format["json_schema"]["schema"])
    except (json.JSONDecodeError, jsonschema.ValidationError, jsonschema.SchemaError) as err:
        return str(err).splitlines()[0]
    return None


# ---- the server ----------------------------------------------------------------------------------

class ScriptedServer:
    """``with ScriptedServer() as server: ... server.base_url ...``"""

    def __init__(self, port: int = 0, fault_rate: float = 0.0, seed: int = 0, delay_s: float = 0.0,
                 timeout_sleep_s: float = 3.0, retry_after_s: float = 0.05, response_format: str = "honour",
                 scripts: dict | None = None, media_io_kwargs: dict | None = None,
                 trust_request_mm_kwargs: bool = True, honour_media_io_kwargs: bool = True):
        if response_format not in RESPONSE_FORMAT_MODES:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMAT_MODES}, got {response_format!r}")
        self.scripts = {**SCRIPTS, **(scripts or {})}  # model name -> request -> reply text
        self.response_format = response_format
        self.video_defaults = (media_io_kwargs or {}).get("video", {})  # the server's --media-io-kwargs
        self.trust_request_mm_kwargs, self.honour_media_io_kwargs = trust_request_mm_kwargs, honour_media_io_kwargs
        self.fault_rate, self.delay_s = fault_rate, delay_s
        self.timeout_sleep_s, self.retry_after_s = timeout_sleep_s, retry_after_s
        self._rng = random.Random(seed)
        self._queue: list[str] = []
        self._lock = threading.Lock()
        self.served: Counter = Counter()  # (model, request digest) -> successful responses
        self.faults: Counter = Counter()  # fault kind -> times injected
        self.auth_headers: set[str] = set()
        self.requests: list[dict] = []  # every chat request: model, prompt, response_format, status
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def inject(self, *faults: str) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
        with self._lock:
            self._queue.extend(faults)

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._queue:
                fault = self._queue.pop(0)
            elif self.fault_rate and self._rng.random() < self.fault_rate:
                fault = self._rng.choice(FAULTS)
            else:
                return None
            self.faults[fault] += 1
            return fault

    def _video_kwargs(self, request: dict) -> dict:
        asked = (request.get("media_io_kwargs") or {}).get("video") if self.honour_media_io_kwargs else None
        return video_io_kwargs(self.video_defaults, asked)

    def vllm_videos(self, request: dict) -> list[tuple[list[np.ndarray], dict]]:
        """Each video of a request as the server keeps it: ``(frames, metadata)``."""
        kwargs, videos = self._video_kwargs(request), []
        for frames in _videos(request):
            kept, metadata = jpeg_video_metadata(len(frames), kwargs)
            videos.append((frames[:kept], metadata))
        return videos

    def _video_metadata(self, request: dict) -> list[dict] | None:
        """The metadata of each video of a request (logged for the tests; ``None``: unreadable)."""
        try:
            return [jpeg_video_metadata(count, self._video_kwargs(request))[1] for count in _frame_counts(request)]
        except (TypeError, ValueError):
            return None

    def _untrusted(self, request: dict) -> bytes | None:
        if self.trust_request_mm_kwargs:
            return None
        refused = [key for key in ("mm_processor_kwargs", "media_io_kwargs") if request.get(key)]
        return json.dumps({"error": {"message": UNTRUSTED.format(refused[0])}}).encode() if refused else None

    def _respond(self, request: dict) -> tuple[int, dict, bytes]:
        """``(status, headers, body)`` for one request, faults included."""
        time.sleep(self.delay_s)
        fault = self._next_fault()
        if fault == "429":
            return 429, {"retry-after": str(self.retry_after_s)}, b'{"error": {"message": "rate limited"}}'
        if fault == "500":
            return 500, {}, b'{"error": {"message": "scripted server error"}}'
        if fault == "timeout":
            time.sleep(self.timeout_sleep_s)
        if fault == "badbody":
            return 200, {}, b"<html>proxy error</html>"
        model = request.get("model")
        if model not in self.scripts:
            return 404, {}, json.dumps({"error": {"message": f"model {model!r} not found"}}).encode()
        if "response_format" in request and self.response_format == "reject":
            return 400, {}, json.dumps(_UNSUPPORTED).encode()
        if (untrusted := self._untrusted(request)) is not None:
            return 400, {}, untrusted
        try:
            request = {**request, "vllm_videos": self.vllm_videos(request)}
            content = "" if fault == "garbage" else self.scripts[model](request)
        except Exception as err:  # a request the script cannot read: the client sent something wrong
            return 400, {}, json.dumps({"error": {"message": f"{type(err).__name__}: {err}"}}).encode()
        if "response_format" in request and fault != "garbage":
            broken = _breaks_schema(content, request["response_format"])
            if broken:  # a real server constrains its output: a script that does not is a bug here
                message = f"scripted reply breaks the schema: {broken}"
                return 500, {}, json.dumps({"error": {"message": message}}).encode()
        digest = hashlib.sha256(json.dumps(request["messages"], sort_keys=True).encode()).hexdigest()[:16]
        with self._lock:
            self.served[(model, digest)] += 1
        content, finish = _limited(content, request.get("max_tokens"))
        body = {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": len(prompt_text(request).split()) + VIDEO_TOKENS_PER_FRAME * sum(
                              len(frames) for frames, _ in request["vllm_videos"]),
                          "completion_tokens": len(content.split()), "total_tokens": 0}}
        return 200, {}, json.dumps(body).encode()

    def _logged(self, request: dict) -> tuple[int, dict, bytes]:
        status, headers, body = self._respond(request)
        with self._lock:
            self.requests.append({"model": request.get("model"), "prompt": prompt_text(request),
                                  "max_tokens": request.get("max_tokens"),
                                  "response_format": request.get("response_format"), "status": status,
                                  "mm_processor_kwargs": request.get("mm_processor_kwargs"),
                                  "media_io_kwargs": request.get("media_io_kwargs"),
                                  "chat_template_kwargs": request.get("chat_template_kwargs"),
                                  "video_frames": _frame_counts(request),
                                  "video_metadata": self._video_metadata(request)})
        return status, headers, body

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.auth_headers.add(self.headers.get("authorization", ""))
                if not self.path.endswith("/chat/completions"):
                    status, headers, body = 404, {}, b'{"error": {"message": "unknown path"}}'
                else:
                    status, headers, body = server._logged(request)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self) -> "ScriptedServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main(scripts: dict | None = None, description: str = __doc__) -> None:
    """Serve until Ctrl-C; ``scripts`` adds models (see :class:`ScriptedServer`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--response-format", choices=RESPONSE_FORMAT_MODES, default="honour",
                        help="honour a request's JSON schema, or reject it with a 400")
    args = parser.parse_args()
    with ScriptedServer(args.port, args.fault_rate, args.seed, response_format=args.response_format,
                        scripts=scripts) as server:
        print(f"scripted OpenAI-compatible server at {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(f"faults injected: {dict(server.faults)}")


if __name__ == "__main__":
    run_and_exit(main)
