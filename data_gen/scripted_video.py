"""The scripted server's video side: a ``data:video/jpeg`` video as vLLM 0.34.0 reads it, and the frame times
each family's processor computes from it (:mod:`data_gen.scripted_server` serves them as ``scripted-times-<family>``).

A video is read as ``VideoMediaIO`` reads it (:func:`video_io_kwargs`, :func:`jpeg_video_metadata`): the server's
``media_io_kwargs`` merged with the request's, the first ``num_frames`` frames kept, and the metadata made up from
them. A reply's prompt length counts ``VIDEO_TOKENS_PER_FRAME`` a kept frame.
"""

from __future__ import annotations

import json

from transformers.video_utils import VideoMetadata

# ---- a video as vLLM 0.34.0 reads it (vllm/multimodal/media/video.py, VideoMediaIO) ----------------------

VLLM_NUM_FRAMES = 32  # VideoMediaIO's default num_frames
VIDEO_TOKENS_PER_FRAME = 16  # the scripted prompt length of one kept frame
UNTRUSTED = ("Per-request {} are disabled by default because they can change multimodal preprocessing resource "
             "usage. Start the server with --trust-request-mm-kwargs only when clients are trusted.")


def video_io_kwargs(server: dict, request: dict | None) -> dict:
    """The settings a request's video is loaded with: ``VideoMediaIO.merge_kwargs`` (the request's win;
    one of ``fps`` and ``num_frames`` set by the request drops the server's other)."""
    merged = {**server, **(request or {})}
    if request and "num_frames" in request and "fps" not in request:
        merged.pop("fps", None)
    elif request and "fps" in request and "num_frames" not in request:
        merged.pop("num_frames", None)
    return merged


def jpeg_video_metadata(sent: int, kwargs: dict) -> tuple[int, dict]:
    """``(frames kept, metadata)`` of a ``data:video/jpeg`` video of ``sent`` frames loaded with ``kwargs``:
    ``VideoMediaIO.load_base64``, its checks included."""
    num_frames = kwargs.get("num_frames", VLLM_NUM_FRAMES)
    if num_frames == 0:
        raise ValueError("num_frames must be greater than 0 or -1")
    kept = min(sent, num_frames) if num_frames > 0 else sent
    fps = float(kwargs.get("fps", 1))
    indices = kwargs.get("frames_indices")
    if indices is None:
        indices = list(range(kept))
    elif not (isinstance(indices, list) and all(isinstance(i, int) for i in indices)):
        raise ValueError("frames_indices must be a list of integers")
    elif len(indices) != kept:
        raise ValueError(f"frames_indices length ({len(indices)}) must match number of frames sent ({kept})")
    total = kwargs.get("total_num_frames", kept)
    if not isinstance(total, int) or total < 1:
        raise ValueError("total_num_frames must be a positive integer")
    if total < kept:
        raise ValueError(f"total_num_frames ({total}) must be >= number of frames sent ({kept})")
    duration = kwargs.get("duration")
    if duration is None:
        duration = total / fps if fps > 0 else 0.0
    elif not isinstance(duration, (int, float)) or duration < 0:
        raise ValueError("duration must be a non-negative number")
    return kept, {"total_num_frames": total, "fps": fps, "duration": duration, "video_backend": "jpeg_sequence",
                  "frames_indices": indices, "do_sample_frames": kwargs.get("do_sample_frames", False)}


# The times each family's processor computes from a video's metadata when it does not sample frames, as
# vLLM 0.34.0 computes them (temporal patches of 2 frames).

def qwen3_vl_times(meta: dict) -> list[str]:
    """qwen3_vl.py ``Qwen3VLProcessingInfo._calculate_timestamps`` (each patch's mean time), written
    ``<{:.1f} seconds>`` by ``Qwen3VLMultiModalProcessor.get_video_repl``; Qwen3.5 uses the same processor."""
    indices = list(meta["frames_indices"])
    if len(indices) % 2:
        indices.append(indices[-1])
    seconds = [i / meta["fps"] for i in indices]
    return [f"{(a + b) / 2:.1f}" for a, b in zip(seconds[::2], seconds[1::2])]


def glm4v_times(meta: dict) -> list[str]:
    """glm4_1v.py ``Glm4vProcessingInfo._get_video_second_idx_glm4v``: repeated indices dropped, the last
    repeated to an even count, each patch's first frame in whole seconds."""
    indices = list(dict.fromkeys(meta["frames_indices"]))
    if len(indices) % 2:
        indices.append(indices[-1])
    return [str(int(i / meta["fps"])) for i in indices[::2]]


def gemma4_times(meta: dict) -> list[str]:
    """gemma4_mm.py ``Gemma4MultiModalProcessor._apply_hf_processor_main``: each frame's ``mm:ss``."""
    fps = meta.get("fps") or 24
    return [f"{int(s // 60):02d}:{int(s % 60):02d}" for s in (i / fps for i in meta["frames_indices"])]


def qwen2_5_vl_times(meta: dict) -> list[float]:
    """Seconds per temporal patch: transformers' ``Qwen2_5_VLProcessor._process_videos`` (5.22, in vLLM
    0.34's pinned range) divides the patch's 2 frames by ``VideoMetadata.sampled_fps``."""
    metadata = VideoMetadata(**{k: v for k, v in meta.items() if k != "do_sample_frames"})
    return [2 / metadata.sampled_fps]


FRAME_TIMES = {"qwen2_5_vl": qwen2_5_vl_times, "qwen3_vl": qwen3_vl_times, "qwen3_5": qwen3_vl_times,
               "glm4v": glm4v_times, "gemma4": gemma4_times}


def frame_times(family: str, request: dict) -> str:
    videos = request["vllm_videos"]
    if len(videos) != 1:
        raise ValueError(f"scripted-times-{family} times one video_url; got {len(videos)}")
    metadata = videos[0][1]
    if metadata["do_sample_frames"] or (request.get("mm_processor_kwargs") or {}).get("do_sample_frames"):
        raise ValueError("the scripted server does not sample frames: send do_sample_frames false")
    return json.dumps(FRAME_TIMES[family](metadata))
