"""The pipeline's settings: one structured OmegaConf config, read from YAML plus ``key=value``.

Every field has the paper's default where the paper gives one. The API key is never part of
the config: only the *name* of the environment variable that holds it (``api.api_key_env``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tpo.data.frames import NUM_FRAMES
from tpo.errors import ConfigError

PROMPT_DIR = Path(__file__).parent / "prompts"


@dataclass
class ApiConfig:
    """The OpenAI-compatible endpoint every API stage uses unless the stage sets its own."""

    base_url: str | None = None  # None: api.openai.com; e.g. http://localhost:8000/v1 for vLLM
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 6  # for 429, 5xx, timeouts and connection errors
    backoff_s: float = 1.0  # first retry delay; doubles each retry (or the server's Retry-After)
    max_backoff_s: float = 60.0
    max_format_retries: int = 2  # re-asks after malformed model output before recording a failure


@dataclass
class ManipulationConfig:
    """How ``S_a`` / ``S_b`` are built from the sampled frames (paper, Sec. 3.1)."""

    irrelevant_per_video: int = 1  # segments per video of each kind: together they set the mix ratio
    incomplete_per_video: int = 1
    irrelevant_window: int = 4  # S_a = this many consecutive sampled frames; S_b = all the others
    incomplete_keep: int = 16  # S_a = all sampled frames; S_b = this many of them, kept uniformly


@dataclass
class CaptionConfig:
    backend: str = "openai"  # openai | transformers
    model: str = "gpt-4o-mini"  # API model name, or a local path / hub id for `transformers`
    base_url: str | None = "${api.base_url}"
    prompt: str = "caption.txt"
    max_tokens: int = 128
    temperature: float = 0.0
    image_size: int = 512  # longest side of the JPEG sent to the API
    jpeg_quality: int = 90
    batch_size: int = 8  # `transformers` backend
    dtype: str = "bfloat16"
    device: str = "auto"


@dataclass
class QuestionConfig:
    model: str = "gpt-4o-mini"
    base_url: str | None = "${api.base_url}"
    prompt: str = "questions.txt"
    per_segment: int = 3
    types: list[str] = field(default_factory=lambda: [
        "temporal order", "action", "attribute", "counting", "causal", "object presence"])
    max_tokens: int = 1024
    temperature: float = 0.7


@dataclass
class AnswerConfig:
    """The video-LMM being trained answers on ``S_a`` (preferred) and ``S_b`` (dis-preferred)."""

    backend: str = "local"  # local (model adapters, batched generate) | openai (e.g. a vLLM server)
    model: str = MISSING  # local: checkpoint path (or builtin:tiny-<family>); openai: served model name
    family: str | None = None  # the adapter family (tpo.models.FAMILIES); openai: whose frame times to send
    base_url: str | None = "${api.base_url}"
    max_new_tokens: int = 256
    truncated: str = "drop"  # an answer cut at max_new_tokens: drop its pair (counted) | keep (no end token)
    time_instruction: bool = False  # LLaVA-Video's time instruction in the prompt (both backends)
    thinking: bool = False  # the chat template's reasoning mode, as model.thinking in training (both backends)
    temperature: float = 0.0  # 0: greedy
    batch_size: int = 8
    dtype: str = "bfloat16"
    device: str = "auto"


@dataclass
class PostFilterConfig:
    enabled: bool = True
    model: str = "gpt-4o-mini"
    base_url: str | None = "${api.base_url}"
    prompt: str = "postfilter.txt"
    # rule 1 as the judge's prompt words it (``$rule1``): paper (B of higher quality than A) |
    # ties_dropped_too (B as good as or better than A); see data_gen.postfilter.RULE1
    rule1: str = "paper"
    max_tokens: int = 256
    temperature: float = 0.0


@dataclass
class SftLlmConfig:
    """The SFT_LLM baseline's answers (paper §3.2, Table 2): the LLM answers each question of a pair from
    the captions the question writer saw; written to ``preferences_sft_llm.jsonl`` (data_gen.sft_llm)."""

    enabled: bool = True  # the paper made this baseline on the same videos and questions: on, like the rest
    model: str = "${questions.model}"  # the paper's question writer, GPT-4o-mini
    base_url: str | None = "${questions.base_url}"
    prompt: str = "sft_llm.txt"
    max_tokens: int = 256  # an answer cut here is marked chosen_truncated (training adds no end token)
    temperature: float = 0.0


@dataclass
class DataGenConfig:
    videos: str = MISSING  # folder searched recursively for video files
    output_dir: str = MISSING
    seed: int = 0
    num_frames: int = NUM_FRAMES
    api: ApiConfig = field(default_factory=ApiConfig)
    manipulation: ManipulationConfig = field(default_factory=ManipulationConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    questions: QuestionConfig = field(default_factory=QuestionConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    postfilter: PostFilterConfig = field(default_factory=PostFilterConfig)
    sft_llm: SftLlmConfig = field(default_factory=SftLlmConfig)


def load_config(path: str | None = None, overrides: list[str] = ()) -> DataGenConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides; interpolations resolved."""
    try:
        cfg = OmegaConf.structured(DataGenConfig)
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        OmegaConf.resolve(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path or 'config'}: {err}".splitlines()[0]) from None
    if missing:
        raise ConfigError(f"{path or 'config'}: these settings are required: {', '.join(missing)}")
    _check(cfg)
    return cfg


def _check(cfg) -> None:
    m = cfg.manipulation
    if not 0 < m.irrelevant_window < cfg.num_frames:
        raise ConfigError(f"manipulation.irrelevant_window must be in [1, num_frames={cfg.num_frames}), "
                          f"got {m.irrelevant_window}")
    if not 0 < m.incomplete_keep < cfg.num_frames:
        raise ConfigError(f"manipulation.incomplete_keep must be in [1, num_frames={cfg.num_frames}), "
                          f"got {m.incomplete_keep}")
    if m.irrelevant_per_video * m.irrelevant_window > cfg.num_frames:
        raise ConfigError("manipulation.irrelevant_per_video windows do not fit in num_frames without overlap")
    for name, choices in (("caption", ("openai", "transformers")), ("answer", ("local", "openai"))):
        if cfg[name].backend not in choices:
            raise ConfigError(f"{name}.backend must be one of {list(choices)}, got {cfg[name].backend!r}")
    if cfg.answer.truncated not in ("drop", "keep"):
        raise ConfigError(f"answer.truncated must be 'drop' or 'keep', got {cfg.answer.truncated!r}")
    if cfg.answer.time_instruction and cfg.answer.backend != "local":
        raise ConfigError("answer.time_instruction needs answer.backend=local: the openai backend sends the frames "
                          "as images, without the prompt the model adapters write")
    if cfg.answer.backend == "local" and not cfg.answer.family:
        raise ConfigError("answer.family is required with answer.backend=local (e.g. llava_onevision)")
    from data_gen.postfilter import RULE1  # (postfilter imports this module)

    if cfg.postfilter.rule1 not in RULE1:
        raise ConfigError(f"postfilter.rule1 must be one of {list(RULE1)}, got {cfg.postfilter.rule1!r}")
    if cfg.sft_llm.max_tokens < 1:
        raise ConfigError(f"sft_llm.max_tokens must be >= 1, got {cfg.sft_llm.max_tokens}")
    if cfg.questions.per_segment < 1 or not cfg.questions.types:
        raise ConfigError("questions.per_segment must be >= 1 and questions.types non-empty")


def masked(text: str) -> str:
    """``text`` with any ``user:password@`` in a URL masked."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)


def to_dict(cfg) -> dict:
    """The resolved config for the manifest, with any ``user:password@`` in a URL masked."""
    def mask(value):
        if isinstance(value, dict):
            return {k: mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        return masked(value) if isinstance(value, str) else value
    return mask(OmegaConf.to_container(cfg, resolve=True))


def prompt_template(name: str) -> str:
    """A prompt template's text: a file path, or a file name inside ``data_gen/prompts/``."""
    path = Path(name) if Path(name).is_file() else PROMPT_DIR / name
    if not path.is_file():
        raise ConfigError(f"prompt template {name!r} not found (looked for {path})")
    return path.read_text(encoding="utf-8")


def template_fields(template: str, text: str) -> dict[str, str] | None:
    """The values ``string.Template(template).substitute`` was given to produce ``text``, or None if
    ``text`` is not that template filled in: how the test servers read a request, whatever the
    template's wording."""
    parts = re.split(r"\$\{?(\w+)\}?", template.replace("$$", "\0"))
    pattern, seen = "", set()
    for i, part in enumerate(parts):
        if i % 2 == 0:
            pattern += re.escape(part.replace("\0", "$"))
        else:
            pattern += f"(?P={part})" if part in seen else f"(?P<{part}>.*?)"
            seen.add(part)
    match = re.fullmatch(pattern, text, re.DOTALL)
    return match.groupdict() if match else None


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else str(value)


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts: the cache key of one item of one stage."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:24]
