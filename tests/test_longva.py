"""LongVA through `transformers` equals LongVA's own code.

The fixture (tests/fixtures/longva, made by its make_reference.py with LongVA's code and the
`transformers` it pins) holds a tiny LongVA checkpoint in LongVA's layout and what LongVA computed
on it. Here it is converted with ``python -m tpo.convert longva`` and run through our classes.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tpo.convert import convert_longva, main as convert_main
from tpo.data.collate import SharedPrefixCollator
from tpo.data.frames import Clip, VideoInfo, frame_metadata, uniform_frame_indices
from tpo.errors import ConfigError
from tpo.models import get_adapter
from tpo.shared_prefix import shared_prefix_logps

FIXTURE = Path(__file__).parent / "fixtures" / "longva"
CHECKPOINT = FIXTURE / "checkpoint"
REFERENCE = load_file(FIXTURE / "reference.safetensors")
META = json.loads((FIXTURE / "reference.json").read_text())
IMAGE_TOKEN_INDEX = -200  # LongVA's placeholder id for its <image> in input_ids


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dst = tmp_path_factory.mktemp("longva") / "converted"
    done = subprocess.run([sys.executable, "-m", "tpo.convert", "longva", str(CHECKPOINT), str(dst)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return dst


@pytest.fixture(scope="module")
def loaded(converted):
    adapter = get_adapter("longva")
    model, processor = adapter.load(str(converted))
    return adapter, model.eval(), processor


def _clip(frames: torch.Tensor) -> Clip:
    info = VideoInfo(300, 25.0)
    return Clip(frames.numpy(), frame_metadata(info, uniform_frame_indices(info.num_frames, len(frames))))


def test_the_auto_classes_load_the_converted_directory(converted):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(converted)
    processor = AutoProcessor.from_pretrained(converted)
    assert type(model).__name__ == "LongvaForConditionalGeneration" and type(processor).__name__ == "LongvaProcessor"
    assert "image_newline" not in dict(model.named_parameters()) and not any("newline" in k for k in model.state_dict())


def test_our_chat_template_renders_longvas_conversation_prompt(loaded):
    adapter, _, processor = loaded
    for question, longva_prompt in zip(META["questions"], META["prompts"]):
        ours = adapter.prompt_text(processor, question)
        assert ours == longva_prompt.replace("<image>", processor.video_token)


def test_prompt_tokens_and_tokens_per_frame_match_longva(loaded):
    adapter, model, processor = loaded
    encoding = adapter.encode_prompt(processor, _clip(REFERENCE["native.frames"]), META["questions"][0])
    frames = META["num_frames"]
    expected = []
    for token in REFERENCE["input_ids"].tolist():
        expected += [processor.video_token_id] * (frames * META["tokens_per_frame"]) if token == IMAGE_TOKEN_INDEX else [token]
    assert encoding.tokens["input_ids"].tolist() == expected
    features = model.model.get_video_features(encoding.vision["pixel_values_videos"]).pooler_output
    assert features.shape[1] == frames * META["tokens_per_frame"]
    counts = processor._get_num_multimodal_tokens(video_sizes=[(frames, 32, 32)])
    assert counts["num_video_tokens"] == [frames * META["tokens_per_frame"]]


def test_frames_preprocess_as_longva_does(loaded):
    """CLIP preprocessing: shortest-edge resize, center crop, CLIP mean/std. LongVA resizes with PIL,
    we with torchvision: the same bicubic filter, so at most one 8-bit level apart in a few pixels."""
    adapter, _, processor = loaded
    for name in ("resized", "native"):
        ours = adapter.encode_prompt(processor, _clip(REFERENCE[f"{name}.frames"]), "q").vision["pixel_values_videos"][0]
        theirs = REFERENCE[f"{name}.pixel_values"]
        assert ours.shape == theirs.shape == (META["num_frames"], 3, 32, 32)
        levels = (ours - theirs).abs() * torch.tensor(processor.video_processor.image_std)[:, None, None] * 255
        if name == "native":  # no resize, no crop: exact
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        else:
            assert levels.max() <= 1.0 + 1e-3 and (levels > 1e-3).float().mean() < 0.01


def test_logits_equal_longvas_from_its_pixel_values(loaded):
    """The model alone: LongVA's preprocessed frames in, LongVA's logits out (both frame sets)."""
    adapter, model, processor = loaded
    for name in ("resized", "native"):
        encoding = adapter.encode_prompt(processor, _clip(REFERENCE[f"{name}.frames"]), META["questions"][0])
        with torch.no_grad():
            logits = model(input_ids=encoding.tokens["input_ids"][None],
                           pixel_values_videos=REFERENCE[f"{name}.pixel_values"][None]).logits[0]
        torch.testing.assert_close(logits, REFERENCE[f"{name}.logits"], rtol=1e-5, atol=1e-5)


def test_pair_logps_through_our_training_path_equal_longvas(loaded):
    """Frames -> our processor -> the shared-prefix training forward gives LongVA's summed log-probs
    of the chosen and rejected answers (frames at the tower's size, so preprocessing is exact)."""
    adapter, model, processor = loaded
    item = {"id": "0", "question": META["questions"][0], "chosen": META["chosen"], "rejected": META["rejected"],
            "clip": _clip(REFERENCE["native.frames"])}
    batch = SharedPrefixCollator(adapter, processor)([item])
    with torch.no_grad():
        logps, counts = shared_prefix_logps(adapter, model, batch)
    expected = REFERENCE["native.pair_logps"]
    torch.testing.assert_close(torch.cat(logps), expected, rtol=1e-5, atol=1e-4)
    assert torch.cat(counts).tolist() == [len(REFERENCE["chosen_ids"]), len(REFERENCE["rejected_ids"])]


def _broken_copy(tmp_path, edit=None, drop_weight=None, rename_weight=None) -> Path:
    src = tmp_path / "src"
    shutil.copytree(CHECKPOINT, src)
    if edit:
        config = json.loads((src / "config.json").read_text())
        config.update(edit)
        (src / "config.json").write_text(json.dumps(config))
    if drop_weight or rename_weight:
        from safetensors.torch import save_file

        weights = load_file(src / "model.safetensors")
        key = drop_weight or rename_weight
        tensor = weights.pop(key)
        if rename_weight:
            weights["model.vision_resampler.extra.weight"] = tensor
        save_file(weights, src / "model.safetensors")
    return src


@pytest.mark.parametrize("edit, message", [
    ({"model_type": "qwen2"}, "not a LongVA checkpoint"),
    ({"mm_projector_type": "linear"}, "unknown projector type 'linear'"),
    ({"mm_spatial_pool_mode": "max"}, "mm_spatial_pool_mode is 'max'"),
    ({"mm_vision_tower": "somewhere/else"}, "mm_vision_tower 'somewhere/else'"),
])
def test_bad_configs_fail_naming_the_file(tmp_path, edit, message):
    src = _broken_copy(tmp_path, edit=edit)
    with pytest.raises(ConfigError, match=message) as err:
        convert_longva(src, tmp_path / "dst")
    assert str(src / "config.json") in str(err.value)


def test_every_weight_is_mapped_or_the_conversion_fails_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="'model.vision_resampler.extra.weight' has no counterpart"):
        convert_longva(_broken_copy(tmp_path / "a", rename_weight="model.mm_projector.2.bias"), tmp_path / "dst")
    with pytest.raises(ConfigError, match="missing from the checkpoint: model.multi_modal_projector.linear_2.bias"):
        convert_longva(_broken_copy(tmp_path / "b", drop_weight="model.mm_projector.2.bias"), tmp_path / "dst")


@pytest.mark.parametrize("command", ["tpo convert", "python -m tpo.convert"])
def test_not_a_checkpoint_directory_is_one_error_line(tmp_path, capsys, command):
    from tpo.cli import main as tpo_main

    convert = (lambda argv: tpo_main(["convert", *argv])) if command == "tpo convert" else convert_main
    assert convert(["longva", str(tmp_path), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'config.json'}: not found; SRC must be a LongVA checkpoint directory"
    assert len(err.splitlines()) == 1 and not (tmp_path / "dst").exists()
