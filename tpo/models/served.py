"""What a video-LMM served behind an OpenAI-compatible API (vLLM) is sent: the shown frames as one video,
with the times training gives them.

A chat message carries the clip as a single ``video_url`` part whose data URL is
``data:video/jpeg;base64,<frame>,<frame>,...``: vLLM's video loader reads that as those frames, in that
order, and the model takes its video path (LLaVA-Video and OneVision: 196 pooled tokens a frame;
Qwen2.5-VL and Qwen3-VL: temporal positions). Frames sent as separate ``image_url`` parts would take
the image path instead (anyres, ~729 tokens an image, no time), which is not what the model says about
a video.

vLLM makes up the metadata of such a video from the request's ``media_io_kwargs["video"]`` (vLLM 0.34.0,
``vllm/multimodal/media/video.py``, ``VideoMediaIO.load_base64``): ``fps`` (default 1), ``frames_indices``
(default ``0..T-1``), ``total_num_frames``, ``duration`` and ``do_sample_frames``; and it keeps only the first
``num_frames`` frames (32 unless the server or the request says otherwise), silently. The processors take
the frames' times from that metadata, so :func:`video_io` tells the server the clip's timing and asks it to
keep every frame, and :class:`FrameCheck` stops a run whose server keeps fewer frames than it is sent.
vLLM 0.34 refuses per-request ``media_io_kwargs`` and ``mm_processor_kwargs`` unless the server is started
with ``--trust-request-mm-kwargs``.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import replace
from typing import Callable

import numpy as np

from tpo.data.frames import Clip, VideoReadError
from tpo.errors import ConfigError, TPOError
from tpo.models import FAMILIES
from tpo.models.adapter import time_instruction

VIDEO_PREFIX = "data:video/jpeg;base64,"
IMAGE_PREFIX = "data:image/jpeg;base64,"

# Families whose processor writes each frame's time into the prompt from frames_indices / fps (vLLM 0.34.0:
# Qwen3VLProcessingInfo._calculate_timestamps, which Qwen3.5 shares; Glm4vProcessingInfo._get_video_second_idx_glm4v;
# Gemma4MultiModalProcessor._apply_hf_processor_main).
FRAME_TIME_FAMILIES = frozenset({"qwen3_vl", "qwen3_5", "glm4v", "gemma4"})
# Qwen2.5-VL spaces its temporal positions by a rate: transformers' Qwen2_5_VLProcessor._process_videos takes
# VideoMetadata.sampled_fps, len(frames_indices) / total_num_frames * fps, where training uses the shown frames'
# mean gap (tpo.data.frames.ShownFrames).
FRAME_RATE_FAMILIES = frozenset({"qwen2_5_vl"})


def jpeg_base64(frame: np.ndarray, max_side: int = 512, quality: int = 90) -> str:
    """An RGB frame as base64 JPEG, downscaled so its longer side is at most ``max_side``."""
    from PIL import Image

    image = Image.fromarray(frame)
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode()


def image_data_url(frame: np.ndarray, max_side: int = 512, quality: int = 90) -> str:
    return IMAGE_PREFIX + jpeg_base64(frame, max_side, quality)


def video_data_url(frames: np.ndarray, max_side: int = 512, quality: int = 90) -> str:
    """The frames ``(T, H, W, 3)`` as one ``data:video/jpeg`` URL, in order."""
    return VIDEO_PREFIX + ",".join(jpeg_base64(f, max_side, quality) for f in frames)


def video_frames(url: str) -> list[np.ndarray]:
    """The frames of a :func:`video_data_url`, in order (what a vLLM server decodes)."""
    from PIL import Image

    if not url.startswith(VIDEO_PREFIX):
        raise ValueError(f"a video must be sent as {VIDEO_PREFIX}<frame>,<frame>,...; got {url[:40]!r}")
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(part))).convert("RGB"))
            for part in url[len(VIDEO_PREFIX):].split(",")]


def video_messages(question: str, clip: Clip, with_time_instruction: bool = False, max_side: int = 512,
                   quality: int = 90) -> list[dict]:
    """One user turn: the clip as one video, then the question (after LLaVA-Video's time
    instruction when asked, as the local adapters write it)."""
    text = f"{time_instruction(clip)}\n{question}" if with_time_instruction else question
    video = {"type": "video_url", "video_url": {"url": video_data_url(clip.frames, max_side, quality)}}
    return [{"role": "user", "content": [video, {"type": "text", "text": text}]}]


def video_io(clip: Clip, family: str | None = None) -> dict:
    """``media_io_kwargs["video"]``: keep every frame, and the metadata from which ``family``'s processor
    computes the times training shows. A model of no named family is told the clip's real timing, which is
    right for every family but Qwen2.5-VL (name it)."""
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; served families: {', '.join(FAMILIES)}")
    settings = {"num_frames": len(clip), "do_sample_frames": False}
    meta = clip.metadata
    if family in FRAME_RATE_FAMILIES:
        # vLLM's default indices 0..T-1 of T frames make sampled_fps equal fps: the shown rate training uses
        return settings | {"fps": float(meta.sampled_fps)}
    if not meta.fps:
        if family in FRAME_TIME_FAMILIES:
            raise VideoReadError(f"{family} is shown each frame's time, but the video's container gives no frame rate")
        return settings
    indices = [int(i) for i in meta.frames_indices]
    if family == "glm4v" and len(set(indices)) < len(indices):
        raise TPOError("GLM-4.1V served by vLLM drops repeated frames before stamping their times, so a clip that "
                       "repeats frames of a video shorter than the frames asked for cannot be shown its times; "
                       "ask for fewer frames or use --backend local")
    # vLLM requires total_num_frames >= the frames sent, which a clip repeating frames of a short video exceeds;
    # its duration is then total_num_frames / fps, as tpo.data.frames.frame_metadata has it
    return settings | {"fps": float(meta.fps), "frames_indices": indices,
                       "total_num_frames": max(int(meta.total_num_frames), len(clip))}


def timing(clip: Clip, family: str | None = None) -> dict:
    """The request's video settings (part of its ``extra_body``).

    ``mm_processor_kwargs.do_sample_frames`` overrides a server's processor default (vLLM 0.34's
    Qwen3VLMultiModalProcessor._apply_hf_processor_main reads it there before the metadata); ``fps`` is the
    shown rate, which older transformers' Qwen2_5_VLProcessor.__call__ turned into its temporal positions and
    which vLLM 0.34's processors read only when they sample frames.
    """
    fps = clip.metadata.sampled_fps if clip.metadata.fps else None
    processor = {"do_sample_frames": False, **({"fps": round(float(fps), 6)} if fps else {})}
    return {"media_io_kwargs": {"video": video_io(clip, family)}, "mm_processor_kwargs": processor}


def extra_body(clip: Clip, family: str | None = None, chat_template_kwargs: dict | None = None) -> dict:
    """A video request's ``extra_body``: its :func:`timing`, and the chat template's arguments when given."""
    body = timing(clip, family)
    if chat_template_kwargs:
        body["chat_template_kwargs"] = dict(chat_template_kwargs)
    return body


def fewer_frames(clip: Clip, drop: int) -> Clip:
    """The clip without its last ``drop`` frames."""
    indices = clip.metadata.frames_indices
    kept = len(clip) - drop
    return Clip(clip.frames[:kept], replace(clip.metadata, frames_indices=None if indices is None else indices[:kept]))


def prompt_tokens_of(client, model: str, family: str | None = None) -> Callable[[Clip], int]:
    """The prompt length the server behind an ``openai.OpenAI`` client reports for a one-token request
    showing a clip."""
    def prompt_tokens(clip: Clip) -> int:
        reply = client.chat.completions.create(model=model, messages=video_messages("", clip), max_tokens=1,
                                               temperature=0.0, extra_body=extra_body(clip, family))
        if reply.usage is None:
            raise TPOError(f"{client.base_url} reports no prompt length, so whether it keeps every frame it is "
                           f"sent cannot be checked")
        return reply.usage.prompt_tokens

    return prompt_tokens


class FrameCheck:
    """Stops a run whose server keeps fewer frames than it is sent.

    Every family's prompt grows with its frames, by at least one temporal patch for two frames more
    (Qwen and GLM pair frames into one). So, once per frame count, the server's prompt length for the clip
    is compared with that for the clip less its last two frames: the same length means it dropped frames
    (vLLM keeps the first ``num_frames``). A cap of exactly one frame less than sent goes unseen.
    """

    def __init__(self, server: str, prompt_tokens: Callable[[Clip], int]):
        self.server, self.prompt_tokens = server, prompt_tokens
        self.checked: set[int] = set()
        self.lock = threading.Lock()  # requests run concurrently: one check per frame count

    def __call__(self, clip: Clip) -> None:
        with self.lock:
            self._check(clip)

    def _check(self, clip: Clip) -> None:
        count = len(clip)
        if count < 3 or count in self.checked:
            return
        if self.prompt_tokens(clip) <= self.prompt_tokens(fewer_frames(clip, 2)):
            raise TPOError(f"{self.server} keeps fewer than the {count} frames it is sent (its prompt is no longer "
                           f"than for {count - 2}); a vLLM server keeps the frames a request asks for when started "
                           f"with --trust-request-mm-kwargs (vLLM 0.34)")
        self.checked.add(count)
