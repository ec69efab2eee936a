"""What a video-LMM served behind an OpenAI-compatible API (vLLM) is sent: the shown frames as one video.

A chat message carries the clip as a single ``video_url`` part whose data URL is
``data:video/jpeg;base64,<frame>,<frame>,...``: vLLM's video loader reads that as exactly those frames,
in that order, and the model takes its video path (LLaVA-Video and OneVision: 196 pooled tokens a frame;
Qwen2.5-VL and Qwen3-VL: temporal positions). Frames sent as separate ``image_url`` parts would take
the image path instead (anyres, ~729 tokens an image, no time), which is not what the model says about
a video.

The frames' timing goes in ``mm_processor_kwargs`` (``fps``: the rate of the *shown* frames, which
the Qwen processors turn into temporal positions; ``do_sample_frames: False``, so the server keeps every
frame sent). vLLM passes those to the model's processor; families without temporal positions ignore them.

vLLM cuts a video at its ``num_frames`` media setting (32 by default). To send more frames than that
(the paper's 96- and 128-frame evaluations), start the server with
``--media-io-kwargs '{"video": {"num_frames": -1}}'``.
"""

from __future__ import annotations

import base64
import io
import logging

import numpy as np

from tpo.data.frames import Clip
from tpo.models.adapter import time_instruction

VLLM_VIDEO_FRAMES = 32  # vLLM's default video num_frames: longer frame lists need the server flag above
VIDEO_PREFIX = "data:video/jpeg;base64,"
IMAGE_PREFIX = "data:image/jpeg;base64,"
log = logging.getLogger(__name__)
_warned_cap = False


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
    global _warned_cap
    if len(frames) > VLLM_VIDEO_FRAMES and not _warned_cap:
        _warned_cap = True
        log.warning("sending %d frames as one video: a vLLM server keeps only %d unless started with "
                    "--media-io-kwargs '{\"video\": {\"num_frames\": -1}}'", len(frames), VLLM_VIDEO_FRAMES)
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


def timing(clip: Clip) -> dict:
    """The request's ``extra_body``: the shown frames' rate for the server's processor."""
    fps = clip.metadata.sampled_fps if clip.metadata.fps else None
    kwargs = {"do_sample_frames": False, **({"fps": round(float(fps), 6)} if fps else {})}
    return {"mm_processor_kwargs": kwargs}
