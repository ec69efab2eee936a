"""A served model shown a video: the frames travel as one ``data:video/jpeg`` video, in order, with
their timing and a request to keep every one; data_gen's answer stage (tests/test_data_gen_pipeline.py)
and ``tpo evaluate --backend openai`` (here) send the same request. The times each family's processor
computes from it: tests/test_served_times.py."""

import json

import numpy as np
import openai
import pytest

from data_gen.scripted_server import VIDEO_TOKENS_PER_FRAME, ScriptedServer
from tpo.data.frames import Clip, VideoInfo, frame_metadata, read_frames, uniform_frame_indices
from tpo.errors import TPOError
from tpo.evaluate.__main__ import main as evaluate_main
from tpo.models.served import (VIDEO_PREFIX, FrameCheck, extra_body, image_data_url, prompt_tokens_of,
                               video_data_url, video_frames, video_messages)
from tpo.synthetic.world import PALETTE, find_object


def _solid(colour: str) -> np.ndarray:
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[8:24, 8:24] = PALETTE[colour]
    return frame


def test_a_video_url_holds_the_frames_in_order():
    colours = ["red", "blue", "green", "yellow", "magenta"]
    url = video_data_url(np.stack([_solid(c) for c in colours]))
    assert url.startswith(VIDEO_PREFIX) and url.count(",") == len(colours)  # prefix comma + 4 separators
    assert [find_object(f)[0] for f in video_frames(url)] == colours
    with pytest.raises(ValueError, match="data:video/jpeg"):
        video_frames(image_data_url(_solid("red")))


def test_the_scripted_policy_refuses_frames_sent_as_images(scripted_server):
    client = openai.OpenAI(base_url=scripted_server.base_url, api_key="x", max_retries=0)
    images = [{"type": "image_url", "image_url": {"url": image_data_url(_solid(c))}} for c in ("red", "blue")]
    with pytest.raises(openai.BadRequestError, match="one video_url"):
        client.chat.completions.create(model="scripted-vlm", messages=[{"role": "user", "content": images}])
    video = {"type": "video_url", "video_url": {"url": video_data_url(np.stack([_solid("red"), _solid("blue")]))}}
    reply = client.chat.completions.create(model="scripted-vlm", messages=[{"role": "user", "content": [video]}])
    assert reply.choices[0].message.content == "I see red, then blue."


def _first_event_items(videos, path):
    """One question per clip on its first event's 4 frames: 'which colour?' (the scripted policy
    names what it sees, so it is right exactly when it was sent those frames)."""
    rows = []
    for clip in sorted(videos.glob("*.mp4")):
        colour = find_object(read_frames(clip, [0])[0])[0]
        others = [c for c in PALETTE if c != colour][:3]
        rows.append({"id": clip.stem, "video": clip.name, "question": "Which colour is the shape?",
                     "options": [*others[:1], colour, *others[1:]], "answer": 1, "frame_indices": [0, 2, 4, 6]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_evaluate_against_a_served_model(raw_videos, scripted_server, tmp_path):
    data = tmp_path / "items.jsonl"
    rows = _first_event_items(raw_videos, data)
    logged = len(scripted_server.requests)
    args = ["mcq", "--benchmark", "jsonl", "--data", str(data), "--videos", str(raw_videos), "--out",
            str(tmp_path / "out"), "--backend", "openai", "--base-url", scripted_server.base_url,
            "--model", "scripted-vlm", "--concurrency", "2"]
    assert evaluate_main(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["backend"] == "openai" and summary["accuracy"] == 1.0 and summary["scored"] == len(rows)
    sent = scripted_server.requests[logged:]
    # the frame check asks for the prompt length of the clip and of the clip less two frames, once
    probes = [r for r in sent if r["max_tokens"] == 1]
    assert sorted(r["video_frames"] for r in probes) == [[2], [4]]
    sent = [r for r in sent if r["max_tokens"] != 1]
    assert len(sent) == len(rows) and all(r["video_frames"] == [4] for r in sent)
    assert all(r["chat_template_kwargs"] == {"enable_thinking": False} for r in sent)
    fps = {r["mm_processor_kwargs"]["fps"] for r in sent}
    assert fps == {4.0}  # every second frame of an 8 fps video
    videos = [r["media_io_kwargs"]["video"] for r in sent]
    assert all(v["num_frames"] == 4 and v["fps"] == 8.0 and v["frames_indices"] == [0, 2, 4, 6] for v in videos)
    assert all(r["video_metadata"][0]["frames_indices"] == [0, 2, 4, 6] for r in sent)  # what the server made of it
    assert all(r["prompt"].startswith("Which colour is the shape?") for r in sent)


def test_a_served_model_has_no_likelihoods(raw_videos, scripted_server, tmp_path, capsys):
    data = tmp_path / "items.jsonl"
    _first_event_items(raw_videos, data)
    base = ["mcq", "--benchmark", "jsonl", "--data", str(data), "--out", str(tmp_path / "out"),
            "--backend", "openai", "--model", "scripted-vlm"]
    assert evaluate_main(base) == 2
    assert "needs --base-url" in capsys.readouterr().err
    assert evaluate_main(base + ["--base-url", scripted_server.base_url, "--scoring", "likelihood"]) == 2
    assert "use --backend local" in capsys.readouterr().err


COLOURS = list(PALETTE)[:5]


def _colours(count: int) -> Clip:
    """``count`` frames of a 50-frame video, the shape's colour changing every 10 frames."""
    indices = uniform_frame_indices(50, count)
    frames = np.stack([_solid(COLOURS[i // 10]) for i in indices])
    return Clip(frames, frame_metadata(VideoInfo(50, 10.0), indices))


def test_a_server_that_drops_frames_stops_the_run():
    clip = _colours(40)  # more than vLLM's default 32
    with ScriptedServer() as keeps, ScriptedServer(honour_media_io_kwargs=False) as caps:
        clients = {s: openai.OpenAI(base_url=s.base_url, api_key="x", max_retries=0) for s in (keeps, caps)}
        FrameCheck(keeps.base_url, prompt_tokens_of(clients[keeps], "scripted-vlm"))(clip)
        reply = clients[keeps].chat.completions.create(model="scripted-vlm", messages=video_messages("?", clip),
                                                       extra_body=extra_body(clip))
        assert reply.choices[0].message.content == "I see " + ", then ".join(COLOURS) + "."
        assert reply.usage.prompt_tokens == 1 + 40 * VIDEO_TOKENS_PER_FRAME

        check = FrameCheck(caps.base_url, prompt_tokens_of(clients[caps], "scripted-vlm"))
        with pytest.raises(TPOError, match=f"^{caps.base_url} keeps fewer than the 40 frames it is sent") as err:
            check(clip)
        assert "\n" not in str(err.value) and "--trust-request-mm-kwargs" in str(err.value)
        check(_colours(32))  # all kept: no error
        assert check.checked == {32}
        # what the run would have been shown: the first 32 frames, four colours
        reply = clients[caps].chat.completions.create(model="scripted-vlm", messages=video_messages("?", clip),
                                                      extra_body=extra_body(clip))
        assert reply.choices[0].message.content == "I see " + ", then ".join(COLOURS[:4]) + "."


def test_a_server_that_refuses_the_requests_video_settings_stops_the_run(raw_videos, tmp_path, capsys):
    data = tmp_path / "items.jsonl"
    _first_event_items(raw_videos, data)
    with ScriptedServer(trust_request_mm_kwargs=False) as server:
        args = ["mcq", "--benchmark", "jsonl", "--data", str(data), "--videos", str(raw_videos), "--out",
                str(tmp_path / "out"), "--backend", "openai", "--base-url", server.base_url, "--model", "scripted-vlm"]
        assert evaluate_main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "(HTTP 400)" in errors[0] and "--trust-request-mm-kwargs" in errors[0]
