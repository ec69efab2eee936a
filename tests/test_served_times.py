"""A served model sees the frame times training shows: the scripted server reads each request's video as
vLLM 0.34 does and answers with the times the family's processor computes from it
(data_gen.scripted_server.FRAME_TIMES); training's come from the family's own processor."""

import json
import re

import numpy as np
import openai
import pytest

from data_gen.scripted_server import FRAME_TIMES
from tpo.data.frames import Clip, VideoInfo, VideoReadError, frame_metadata, uniform_frame_indices
from tpo.errors import ConfigError, TPOError
from tpo.models import get_adapter
from tpo.models.served import extra_body, video_io, video_messages

FPS = 25.0


def _clip(seconds: float, indices: list[int] | None = None, fps: float = FPS) -> Clip:
    info = VideoInfo(int(seconds * FPS), fps)
    indices = indices or uniform_frame_indices(info.num_frames, 8)
    frames = np.random.default_rng(0).integers(0, 255, (len(indices), 32, 32, 3), dtype=np.uint8)
    return Clip(frames, frame_metadata(info, indices))


CLIPS = {
    "whole": _clip(200.0),  # 8 frames spread over 200 s
    "window": _clip(200.0, uniform_frame_indices(5000, 32)[8:15]),  # 7 consecutive of 32: an odd count, late start
    "short": _clip(4 / FPS),  # 8 frames of a 4-frame video: each repeated
}


def _training_times(family: str, clip: Clip) -> list:
    """The times the family's processor gives the clip on the training path, as its prompt writes them."""
    processor = get_adapter(family).load_processor(f"builtin:tiny-{family}")
    encoded = get_adapter(family).encode_prompt(processor, clip, "What happens?")
    if family == "qwen2_5_vl":
        return encoded.vision["second_per_grid_ts"].tolist()
    text = processor.tokenizer.decode(encoded.tokens["input_ids"])
    if family == "glm4v":
        return re.findall(r"<\|end_of_image\|>(.*?)(?=<\|begin_of_image\|>|<\|end_of_video\|>)", text)
    if family == "gemma4":
        return re.findall(rf"(\d\d:\d\d) {re.escape(processor.boi_token)}{re.escape(processor.video_token)}", text)
    return re.findall(r"<(\d+\.\d) seconds>", text)


def _served_times(server, family: str, clip: Clip, body: dict) -> list:
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    reply = client.chat.completions.create(model=f"scripted-times-{family}", messages=video_messages("?", clip),
                                           extra_body=body)
    return json.loads(reply.choices[0].message.content)


@pytest.mark.parametrize("family", sorted(FRAME_TIMES))
def test_a_served_model_sees_the_frame_times_training_shows(family, scripted_server):
    for name, clip in CLIPS.items():
        if family == "glm4v" and name == "short":
            continue  # refused: see the next test
        training = _training_times(family, clip)
        served = _served_times(scripted_server, family, clip, extra_body(clip, family))
        assert served == pytest.approx(training, rel=1e-6) if family == "qwen2_5_vl" else served == training, name
        # the rate alone (the request before media_io_kwargs): vLLM's made-up 1 fps and indices 0..T-1
        rate_only = _served_times(scripted_server, family, clip, {"mm_processor_kwargs": {
            "do_sample_frames": False, "fps": clip.metadata.sampled_fps}})
        assert rate_only != pytest.approx(training, rel=1e-3) if family == "qwen2_5_vl" else rate_only != training


def test_times_that_cannot_be_sent_are_refused_in_one_line():
    with pytest.raises(TPOError, match="GLM-4.1V served by vLLM drops repeated frames"):
        video_io(CLIPS["short"], "glm4v")
    no_rate = _clip(8.0, fps=0.0)
    with pytest.raises(VideoReadError, match="qwen3_vl is shown each frame's time, but the video's container"):
        video_io(no_rate, "qwen3_vl")
    assert video_io(no_rate, "llava_onevision") == {"num_frames": 8, "do_sample_frames": False}
    with pytest.raises(ConfigError, match="unknown model family 'qwen9'"):
        video_io(CLIPS["whole"], "qwen9")


def test_a_model_of_no_named_family_is_told_the_clips_real_timing():
    clip = CLIPS["window"]
    assert video_io(clip) == video_io(clip, "qwen3_vl") == {
        "num_frames": 7, "do_sample_frames": False, "fps": FPS, "frames_indices": clip.metadata.frames_indices,
        "total_num_frames": 5000}
    assert video_io(clip, "qwen2_5_vl") == {"num_frames": 7, "do_sample_frames": False,
                                            "fps": pytest.approx(clip.metadata.sampled_fps)}


def test_the_request_carries_the_chat_templates_arguments(scripted_server):
    clip = CLIPS["whole"]
    assert "chat_template_kwargs" not in extra_body(clip, "qwen3_5")
    body = extra_body(clip, "qwen3_5", {"enable_thinking": False})
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    _served_times(scripted_server, "qwen3_5", clip, body)
    assert scripted_server.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}
