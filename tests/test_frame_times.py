"""Every model sees the real timing of its frames: fps, frame indices, duration from the decoded video."""

import re

import numpy as np
import pytest
import torch

from data_gen.answer import AnswerRequest
from data_gen.index import Video, probe
from tpo.data.collate import SharedPrefixCollator
from tpo.data.datamodule import PreferenceDataModule
from tpo.data.frames import Clip, VideoInfo, frame_metadata, read_clip, uniform_frame_indices
from tpo.evaluate.benchmarks import MCQItem
from tpo.evaluate.mcq import item_clip
from tpo.evaluate.protocol import Protocol
from tpo.models import get_adapter
from tpo.module import TPOModule
from tpo.scoring import TWO_PASS, pair_collator
from tpo.shared_prefix import pair_position_ids

FPS = 25.0


def _clip(frames: np.ndarray, seconds: float, indices=None) -> Clip:
    info = VideoInfo(int(seconds * FPS), FPS)
    indices = indices or uniform_frame_indices(info.num_frames, len(frames))
    return Clip(frames, frame_metadata(info, indices))


def _video_positions(family: str, clip: Clip):
    """Temporal positions of the video tokens on the training path (collator + pair positions)."""
    adapter = get_adapter(family)
    model, processor = adapter.load(f"builtin:tiny-{family}")
    item = {"id": "0", "question": "What happens?", "chosen": "A.", "rejected": "B.", "clip": clip}
    batch = SharedPrefixCollator(adapter, processor)([item])
    positions = pair_position_ids(adapter, model, batch["inputs"], batch["segments"])
    video = batch["inputs"]["input_ids"][0] == processor.video_token_id
    return positions[0, 0, video], batch["inputs"], model.config


def test_qwen2_5_vl_places_frames_at_their_real_times():
    frames = np.random.default_rng(0).integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    short, long = _clip(frames, 10.0), _clip(frames, 200.0)
    got = {}
    for name, clip in (("short", short), ("long", long)):
        temporal, inputs, config = _video_positions("qwen2_5_vl", clip)
        meta = clip.metadata
        gap_s = (meta.frames_indices[-1] - meta.frames_indices[0]) / (len(clip) - 1) / meta.fps
        # one temporal grid step covers 2 frames; the model spaces steps tokens_per_second * seconds apart
        assert inputs["second_per_grid_ts"].item() == pytest.approx(2 * gap_s, rel=1e-6)
        step = config.vision_config.tokens_per_second * inputs["second_per_grid_ts"].item()
        grid_t = len(clip) // 2
        per_step = len(temporal) // grid_t
        start = temporal[0].item()
        expected = torch.tensor([start + int(g * step) for g in range(grid_t) for _ in range(per_step)])
        assert torch.equal(temporal, expected)
        got[name] = temporal
    assert not torch.equal(got["short"], got["long"])
    assert got["long"][-1] - got["long"][0] > 15 * (got["short"][-1] - got["short"][0])  # 20x the seconds


def test_a_window_of_consecutive_frames_keeps_its_real_rate():
    """The irrelevant ``S_a`` (4 consecutive of 32 sampled frames) is not 8x slower than the whole video."""
    info = VideoInfo(5000, FPS)  # 200 s
    sampled = uniform_frame_indices(info.num_frames, 32)
    whole, window = frame_metadata(info, sampled), frame_metadata(info, sampled[8:12])
    assert whole.sampled_fps == pytest.approx(32 / 200, rel=0.01)
    assert window.sampled_fps == pytest.approx(whole.sampled_fps, rel=0.01)
    assert window.timestamps == [i / FPS for i in sampled[8:12]]


def test_every_stage_times_frames_from_the_decoded_video(pref_file):
    """data_gen's answer stage, training (and so the reference precompute) and evaluation agree."""
    dm = PreferenceDataModule(str(pref_file))
    dm.connect(TPOModule("builtin:tiny-qwen2_5_vl", "qwen2_5_vl"))
    dm.setup("fit")
    record = dm.train_set.records[0]
    training = dm.train_set[0]["clip"]
    path, indices = record.video_path, record.frame_indices
    video = Video(record.video, path, identity="x", **probe(path))
    generation = AnswerRequest(video, tuple(indices), tuple(indices), "?").clip()
    evaluation = item_clip(MCQItem("q", path, "?", ["a", "b"], 0, frame_indices=indices), 32, Protocol())
    assert video.fps > 0 and training.metadata.fps == pytest.approx(video.fps)
    for clip in (generation, evaluation):
        assert clip.times == training.times and clip.metadata.sampled_fps == training.metadata.sampled_fps
        assert np.array_equal(clip.frames, training.frames)
    batch = dm.collator([dm.train_set[0]])
    assert batch["inputs"]["second_per_grid_ts"].item() == pytest.approx(2 / training.metadata.sampled_fps)


def test_llava_video_time_instruction_is_an_option():
    frames = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    clip = _clip(frames, 10.0)
    processor = get_adapter("llava_onevision").load_processor("builtin:tiny-llava_onevision")
    plain = get_adapter("llava_onevision").prompt_text(processor, "What happens?", clip)
    timed = get_adapter("llava_onevision", time_instruction=True).prompt_text(processor, "What happens?", clip)
    assert "lasts for" not in plain
    times = ",".join(f"{t:.2f}s" for t in clip.times)
    assert (f"The video lasts for 10.00 seconds, and 8 frames are uniformly sampled from it. These frames are "
            f"located at {times}.Please answer the following questions related to this video.\nWhat happens?") in timed
    assert times.startswith("0.60s,1.84s")


def test_read_clip_reports_the_container_timing(pref_file):
    path = next((pref_file.parent / "videos").glob("*.mp4"))
    clip = read_clip(path, [0, 8, 16])
    assert clip.metadata.fps == pytest.approx(probe(path)["fps"]) and clip.metadata.total_num_frames == 32
    assert clip.times == pytest.approx([0, 8 / clip.metadata.fps, 16 / clip.metadata.fps])


def _assert_stamped_with_real_times(processor, prompt, clip: Clip) -> None:
    text = processor.tokenizer.decode(prompt.tokens["input_ids"])
    # one stamp per temporal patch of 2 frames: the mean time of its frames
    stamps = [(a + b) / 2 for a, b in zip(clip.times[::2], clip.times[1::2])]
    assert [f"<{t:.1f} seconds>" in text for t in stamps] == [True] * (len(clip) // 2), text


def test_qwen3_vl_writes_the_real_frame_times_into_the_prompt():
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    adapter = get_adapter("qwen3_vl")
    model, processor = adapter.load("builtin:tiny-qwen3_vl")
    encoded = {}
    for seconds in (10.0, 200.0):
        clip = _clip(frames, seconds)
        prompt = adapter.encode_prompt(processor, clip, "What happens?")
        _assert_stamped_with_real_times(processor, prompt, clip)
        encoded[seconds] = prompt
        item = {"id": "0", "question": "What happens?", "chosen": "A.", "rejected": "B.", "clip": clip}
        batch = SharedPrefixCollator(adapter, processor)([item])
        positions = pair_position_ids(adapter, model, batch["inputs"], batch["segments"])
        base, _ = adapter.rope_index(model)(input_ids=batch["inputs"]["input_ids"],
                                            mm_token_type_ids=batch["inputs"]["mm_token_type_ids"],
                                            video_grid_thw=batch["inputs"]["video_grid_thw"])
        p = batch["segments"][0, 0].item()
        assert torch.equal(positions[:, :, :p], base[:, :, :p])  # the prompt's positions are the model's own
    assert not torch.equal(encoded[10.0].tokens["input_ids"], encoded[200.0].tokens["input_ids"])


def _glm_stamps(text: str) -> list[str]:
    """The text GLM-4V's processor writes after each frame image of a video."""
    return re.findall(r"<\|end_of_image\|>(.*?)(?=<\|begin_of_image\|>|<\|end_of_video\|>)", text)


def test_glm4v_writes_the_real_second_of_each_temporal_patch_into_the_prompt():
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    adapter = get_adapter("glm4v")
    model, processor = adapter.load("builtin:tiny-glm4v")
    window = uniform_frame_indices(int(200 * FPS), 32)[8:16]  # 8 consecutive of 32 frames sampled from 200 s
    clips = {"short": _clip(frames, 10.0), "long": _clip(frames, 200.0), "window": _clip(frames, 200.0, window)}
    texts = {}
    for name, clip in clips.items():
        item = {"id": "0", "question": "What happens?", "chosen": "A.", "rejected": "B.", "clip": clip}
        batch = SharedPrefixCollator(adapter, processor)([item])
        inputs = batch["inputs"]
        texts[name] = processor.tokenizer.decode(inputs["input_ids"][0])
        # one image per temporal patch of 2 frames, stamped with its first frame's time in whole seconds
        assert _glm_stamps(texts[name]) == [str(int(t)) for t in clip.times[::2]], texts[name]
        positions = pair_position_ids(adapter, model, inputs, batch["segments"])
        base, _ = adapter.rope_index(model)(input_ids=inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                            video_grid_thw=inputs["video_grid_thw"])
        p = batch["segments"][0, 0].item()
        assert torch.equal(positions[:, :, :p], base[:, :, :p])  # the prompt's positions are the model's own
    assert _glm_stamps(texts["window"])[0] == str(int(clips["window"].times[0])) != "0"
    assert len(set(texts.values())) == 3


def test_internvl_numbers_its_frames_and_sees_times_only_through_the_time_instruction():
    """InternVL's processor writes ``FrameN: <img>...</img>`` per frame, with no time: the clip's timing
    reaches the model only when the prompt carries LLaVA-Video's time instruction."""
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    processor = get_adapter("internvl").load_processor("builtin:tiny-internvl")
    tokens = {}
    for timed in (False, True):
        adapter = get_adapter("internvl", time_instruction=timed)
        for seconds in (10.0, 200.0):
            clip = _clip(frames, seconds)
            ids = adapter.encode_prompt(processor, clip, "What happens?").tokens["input_ids"]
            text = processor.tokenizer.decode(ids)
            blocks = [f"Frame{i + 1}: <img>{'<IMG_CONTEXT>' * processor.image_seq_length}</img>" for i in range(4)]
            assert "\n".join(blocks) in text and "Frame5" not in text, text
            assert (",".join(f"{t:.2f}s" for t in clip.times) in text) == timed
            tokens[timed, seconds] = ids
    assert torch.equal(tokens[False, 10.0], tokens[False, 200.0])
    assert not torch.equal(tokens[True, 10.0], tokens[True, 200.0])


def test_gemma4_writes_each_frames_real_time_into_the_prompt():
    """Gemma 4's processor puts an ``mm:ss`` stamp before every frame, from the clip's metadata."""
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    adapter = get_adapter("gemma4")
    processor = adapter.load_processor("builtin:tiny-gemma4")
    stamps = {}
    for seconds in (10.0, 200.0):
        clip = _clip(frames, seconds)
        text = processor.tokenizer.decode(adapter.encode_prompt(processor, clip, "What happens?").tokens["input_ids"])
        stamps[seconds] = re.findall(rf"(\d\d:\d\d) {re.escape(processor.boi_token)}{re.escape(processor.video_token)}",
                                     text)
        assert stamps[seconds] == [f"{int(t // 60):02d}:{int(t % 60):02d}" for t in clip.times], text
    assert stamps[200.0] != stamps[10.0] and stamps[200.0][-1] >= "03:00"  # the last frame near the 200 s end


def test_qwen3_5_trains_on_the_real_frame_times_in_both_rows_of_a_pair():
    """Qwen3.5 places frames in time by text alone (each temporal patch is its own grid after its stamp);
    it trains two rows per pair, and each carries the stamped prompt."""
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    module = TPOModule("builtin:tiny-qwen3_5", "qwen3_5")
    adapter, processor = module.adapter, module.processor
    assert module.layout == TWO_PASS
    encoded = {}
    for seconds in (10.0, 200.0):
        clip = _clip(frames, seconds)
        prompt = adapter.encode_prompt(processor, clip, "What happens?")
        _assert_stamped_with_real_times(processor, prompt, clip)
        item = {"id": "0", "question": "What happens?", "chosen": "A.", "rejected": "B.", "clip": clip}
        ids = pair_collator(module.layout, adapter, processor)([item])["inputs"]["input_ids"]
        p = len(prompt.tokens["input_ids"])
        assert len(ids) == 2 and all(torch.equal(row[:p], prompt.tokens["input_ids"]) for row in ids)
        encoded[seconds] = prompt
    assert not torch.equal(encoded[10.0].tokens["input_ids"], encoded[200.0].tokens["input_ids"])
