"""Prompts end where the chat template ends them, and answers end with the template's end-of-turn token.

The tiny models carry each family's released chat template (``tpo/synthetic/chat_templates``, sources in
its SOURCES.json): Qwen3.5's generation prompt opens a reasoning block, GLM-4.1V's assistant turn ends
with ``<|user|>`` (its eos is ``<|endoftext|>``), Gemma 4's with ``<turn|>`` while its tokenizer's eos is
``<eos>``, and LLaVA-NeXT-Video's with nothing (its eos ``</s>`` ends it).
"""

from dataclasses import replace

import pytest
import torch

from tpo.models import FAMILIES, get_adapter
from tpo.models.adapter import IGNORE_INDEX, end_of_turn_ids, ends_in_open_think
from tpo.synthetic.tiny_builders import chat_template
from tpo.synthetic.tiny_models import build_tiny
from tpo.two_pass import labelled_row

END_OF_TURN = {"qwen2_vl": "<|im_end|>", "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>",
               "qwen3_5": "<|im_end|>", "llava_onevision": "<|im_end|>", "internvl": "<|im_end|>",
               "longva": "<|im_end|>", "glm4v": "<|user|>", "gemma4": "<turn|>", "llava_next_video": "</s>"}
ASSISTANT_HEADER = {"glm4v": "<|assistant|>\n", "gemma4": "<|turn>model\n", "llava_next_video": "ASSISTANT:",
                    "qwen3_5": "<|im_start|>assistant\n<think>\n\n</think>\n\n"}

_QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
_QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
# What each released template renders for one question (a user turn with a video and "What happens?", the
# generation prompt, thinking off), written out from the released templates (see chat_templates/SOURCES.json):
# Qwen2/2.5-VL add a default system turn, LLaVA-OneVision's -hf template writes "user " and no newline after
# <|im_end|>, Gemma 4 starts with <bos> and sets the video off by blank lines, and LongVA's is tpo.convert's.
RELEASED_PROMPT = {
    "qwen2_vl": f"{_QWEN_SYSTEM}<|im_start|>user\n{_QWEN_VIDEO}What happens?<|im_end|>\n<|im_start|>assistant\n",
    "qwen2_5_vl": f"{_QWEN_SYSTEM}<|im_start|>user\n{_QWEN_VIDEO}What happens?<|im_end|>\n<|im_start|>assistant\n",
    "qwen3_vl": f"<|im_start|>user\n{_QWEN_VIDEO}What happens?<|im_end|>\n<|im_start|>assistant\n",
    "qwen3_5": f"<|im_start|>user\n{_QWEN_VIDEO}What happens?<|im_end|>\n<|im_start|>assistant\n"
               "<think>\n\n</think>\n\n",
    "llava_onevision": "<|im_start|>user <video>\nWhat happens?<|im_end|><|im_start|>assistant\n",
    "llava_next_video": "USER: <video>\nWhat happens? ASSISTANT:",
    "internvl": "<|im_start|>user\n<video>\nWhat happens?<|im_end|>\n<|im_start|>assistant\n",
    "glm4v": "[gMASK]<sop><|user|>\n<|begin_of_video|><|video|><|end_of_video|>What happens?<|assistant|>\n",
    "gemma4": "<bos><|turn>user\n\n\n<|video|>\n\nWhat happens?<turn|>\n<|turn>model\n",
    "longva": f"{_QWEN_SYSTEM}<|im_start|>user\n<video>\nWhat happens?<|im_end|>\n<|im_start|>assistant\n",
}


@pytest.fixture(scope="module")
def processors():
    return {family: build_tiny(family)[1] for family in FAMILIES}


def _tokens(processor, ids):
    return processor.tokenizer.convert_ids_to_tokens(ids)


def test_every_family_is_covered():
    assert set(END_OF_TURN) == set(FAMILIES) == set(RELEASED_PROMPT)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_prompt_is_what_the_released_template_renders(processors, family):
    processor = processors[family]
    assert processor.chat_template == chat_template(family)
    assert get_adapter(family).prompt_text(processor, "What happens?") == RELEASED_PROMPT[family]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_special_token_of_the_prompt_is_one_special_token(processors, family):
    """The tiny tokenizer has the released special tokens the template writes: each encodes to one id."""
    tok = processors[family].tokenizer
    text = RELEASED_PROMPT[family]
    specials = [t for t in tok.all_special_tokens if t in text]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for token in specials:
        assert tok.convert_tokens_to_ids(token) in ids, token
    assert tok.decode(ids) == text


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prompt_ends_at_the_assistant_header_with_no_open_reasoning_block(processors, family):
    text = get_adapter(family).prompt_text(processors[family], "What happens?")
    assert text.endswith(ASSISTANT_HEADER.get(family, "<|im_start|>assistant\n"))
    assert not ends_in_open_think(text)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_answers_end_with_the_templates_end_of_turn_token(processors, family):
    processor = processors[family]
    adapter = get_adapter(family)
    ids = adapter.response_ids(processor, "The red square.")
    assert _tokens(processor, ids[-1:]) == [END_OF_TURN[family]]
    assert _tokens(processor, end_of_turn_ids(processor)[:1]) == [END_OF_TURN[family]]
    # the labels of a training row end with it too
    prompt = {"input_ids": torch.tensor([1, 2, 3]), "attention_mask": torch.ones(3, dtype=torch.long)}
    labels = labelled_row(prompt, ids)["labels"]
    assert labels[-1].item() == ids[-1] and (labels[:3] == IGNORE_INDEX).all()
    assert adapter.response_ids(processor, "The red", end=False)[-1] not in end_of_turn_ids(processor)


def test_the_end_of_turn_is_read_from_the_template_not_taken_to_be_eos(processors):
    gemma, glm = processors["gemma4"], processors["glm4v"]
    assert gemma.tokenizer.eos_token == "<eos>" and glm.tokenizer.eos_token == "<|endoftext|>"
    # both stop generation: the turn's end first (what training labels), then eos
    assert _tokens(gemma, end_of_turn_ids(gemma)) == ["<turn|>", "<eos>"]
    assert _tokens(glm, end_of_turn_ids(glm)) == ["<|user|>", "<|endoftext|>"]


def test_a_template_that_closes_the_turn_with_nothing_ends_it_with_eos(processors):
    """LLaVA-NeXT-Video's released template renders an assistant turn as 'ASSISTANT: answer ' running into
    the next 'USER:': no token ends it, so the tokenizer's eos (</s>) does, in labels and in generation."""
    processor = processors["llava_next_video"]
    turns = [{"role": "user", "content": [{"type": "text", "text": "Q"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
             {"role": "user", "content": [{"type": "text", "text": "Q"}]}]
    assert processor.apply_chat_template(turns, tokenize=False) == "USER: Q ASSISTANT: A USER: Q "
    assert _tokens(processor, end_of_turn_ids(processor)) == ["</s>"] == [processor.tokenizer.eos_token]
    ids = get_adapter("llava_next_video").response_ids(processor, "The red square.")
    assert _tokens(processor, ids[-1:]) == ["</s>"]


def test_generation_stops_at_the_end_of_turn_token():
    from types import SimpleNamespace

    from tpo.models.generate import stop_token_ids

    model, processor = build_tiny("gemma4")
    unconfigured = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None))
    assert _tokens(processor, stop_token_ids(unconfigured, processor)) == ["<turn|>", "<eos>"]


def test_thinking_is_one_setting_of_the_prompt(processors):
    processor = processors["qwen3_5"]
    off = get_adapter("qwen3_5").prompt_text(processor, "Q?")
    on = get_adapter("qwen3_5", thinking=True).prompt_text(processor, "Q?")
    assert off.endswith("<think>\n\n</think>\n\n") and on.endswith("<|im_start|>assistant\n<think>\n")
    assert ends_in_open_think(on) and not ends_in_open_think(off)


def test_a_thinking_only_template_gets_its_reasoning_block_closed(processors):
    """Qwen3-VL-Thinking's template opens the block whatever ``enable_thinking`` says; thinking off
    closes it empty, as hybrid templates do, so the answer is a final answer."""
    processor = build_tiny("qwen3_vl")[1]
    # Qwen3-VL-Thinking's generation prompt opens the block: '<|im_start|>assistant\n<think>\n'
    prompt = "{{- '<|im_start|>assistant\\n' }}"
    assert processor.chat_template.count(prompt) == 1
    processor.chat_template = processor.chat_template.replace(prompt, "{{- '<|im_start|>assistant\\n<think>\\n' }}")
    text = get_adapter("qwen3_vl").prompt_text(processor, "Q?")
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert replace(get_adapter("qwen3_vl"), thinking=True).prompt_text(processor, "Q?").endswith("<think>\n")


def test_the_trained_reasoning_mode_is_what_evaluation_uses(tmp_path):
    import json
    import shutil

    from tpo.evaluate.model import load_for_eval
    from tpo.export import PROMPT_FILE
    from tpo.synthetic.tiny_models import tiny_model_path

    export = tmp_path / "export"
    shutil.copytree(tiny_model_path("qwen3_5"), export)
    (export / PROMPT_FILE).write_text(json.dumps({"family": "qwen3_5", "time_instruction": False, "thinking": True}))
    adapter, _, _ = load_for_eval(str(export), dtype=torch.float32, device="cpu")
    assert adapter.thinking
    adapter, _, _ = load_for_eval(str(tiny_model_path("qwen3_5")), dtype=torch.float32, device="cpu")
    assert not adapter.thinking


def test_a_reasoning_reply_is_read_after_its_reasoning():
    from tpo.evaluate.answers import extract_choice

    options = ["the red square", "the blue circle"]
    assert extract_choice("<think>A is wrong, so maybe B... or A</think>\n\nB.", options) == 1
    assert extract_choice("B. The blue circle.", options) == 1
