"""Prompts end where the chat template ends them, and answers end with the template's end-of-turn token.

The tiny models carry templates in the style of each family's release: Qwen3.5's generation prompt
opens a reasoning block, GLM-4.1V's assistant turn ends with ``<|user|>`` (its eos is
``<|endoftext|>``), and Gemma 4's with ``<turn|>`` while its tokenizer's eos is ``<eos>``.
"""

from dataclasses import replace

import pytest
import torch

from tpo.models import FAMILIES, get_adapter
from tpo.models.adapter import IGNORE_INDEX, end_of_turn_ids, ends_in_open_think
from tpo.synthetic.tiny_models import build_tiny
from tpo.two_pass import labelled_row

END_OF_TURN = {"qwen2_vl": "<|im_end|>", "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>",
               "qwen3_5": "<|im_end|>", "llava_onevision": "<|im_end|>", "internvl": "<|im_end|>",
               "longva": "<|im_end|>", "glm4v": "<|user|>", "gemma4": "<turn|>", "llava_next_video": "</s>"}
ASSISTANT_HEADER = {"glm4v": "<|assistant|>\n", "gemma4": "<|turn>model\n", "llava_next_video": "ASSISTANT:",
                    "qwen3_5": "<|im_start|>assistant\n<think>\n\n</think>\n\n"}


@pytest.fixture(scope="module")
def processors():
    return {family: build_tiny(family)[1] for family in FAMILIES}


def _tokens(processor, ids):
    return processor.tokenizer.convert_ids_to_tokens(ids)


def test_every_family_is_covered():
    assert set(END_OF_TURN) == set(FAMILIES)


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
    processor.chat_template = processor.chat_template.replace(
        "<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}")
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
