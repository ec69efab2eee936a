"""Each family's released 7B-class config on the meta device (no weights, no memory): block discovery (language
and vision), the FSDP2 plan, the LoRA targets, the pair layout and the part of every parameter; and one training
step's activation memory at 32 frames, with no full-vocabulary tensor over the prompt.

The configs and where each comes from are in ``tests/fixtures/released_configs`` (``SOURCES.json``).
"""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.fsdp as fsdp
from torch import nn

from activation_memory import ANSWER, PROMPT_TEXT, estimate, logit_positions, video_tokens
from conftest import random_clip
from tpo import sharding
from tpo.lora import language_blocks, lora_targets
from tpo.models import FAMILIES, IGNORE_INDEX, PARTS, UNUSED, get_adapter
from tpo.scoring import SHARED_PREFIX, TWO_PASS, answer_logps, layout_for, pair_collator

ROOT = Path(__file__).resolve().parent / "fixtures" / "released_configs"
SOURCES = json.loads((ROOT / "SOURCES.json").read_text())
RELEASED = sorted(p.name for p in ROOT.iterdir() if (p / "config.json").is_file())
TRAINABLE = ("language_model", "projector")  # TPOModule's default


@functools.cache
def meta_model(family: str) -> nn.Module:
    """The family's released architecture as training builds it (``tpo.sharding.empty_model``): parameters on
    the meta device, buffers real. Built once per family; tests that change a model build their own."""
    return sharding.empty_model(FAMILIES[family], str(ROOT / family), torch.bfloat16)


def language_layers(model) -> list[nn.Module]:
    """The language model's decoder layers, found by the model's own layout rather than by tpo's discovery."""
    return list(model.model.language_model.layers)


def vision_depth(family: str, config) -> int:
    vision = config.vision_config
    return vision.depth if hasattr(vision, "depth") else vision.num_hidden_layers


def blocks_by_part(family: str, model) -> dict[str, list[str]]:
    adapter = FAMILIES[family]
    classes = tuple(adapter.block_classes(model))
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, classes):
            found.setdefault(adapter.part_of(name), []).append(name)
    return found


def test_every_family_has_a_released_config_with_its_source():
    assert RELEASED == sorted(FAMILIES)
    for family in RELEASED:
        source = SOURCES[family]
        assert source["checkpoint"] and source["fidelity"] and source["note"]
        assert {"repository", "converter", "source"} & set(source), family  # where the values were taken from


@pytest.mark.parametrize("family", RELEASED)
def test_the_released_config_builds_on_the_meta_device_as_a_7b_class_model(family):
    model = meta_model(family)
    assert model.config.model_type in FAMILIES[family].model_types
    assert all(p.is_meta for p in model.parameters())
    size = sum(p.numel() for p in model.parameters())
    assert 6e9 < size < 12e9, f"{family}: {size / 1e9:.2f}B parameters"


@pytest.mark.parametrize("family", RELEASED)
def test_block_discovery_finds_every_language_and_vision_layer(family):
    model = meta_model(family)
    found = blocks_by_part(family, model)
    text, config = model.config.get_text_config(), model.config

    assert len(found["language_model"]) == text.num_hidden_layers
    assert [b for _, b in language_blocks(model, FAMILIES[family])] == language_layers(model)
    assert len(found["vision_tower"]) == vision_depth(family, config)
    expected = {"language_model", "vision_tower"}
    if family == "gemma4":  # the audio tower's conformer layers: blocks too, in the part that never trains
        expected.add(UNUSED)
        assert len(found[UNUSED]) == config.audio_config.num_hidden_layers
    assert set(found) == expected


class Mesh:
    """Stands in for the device mesh: ``fully_shard`` is recorded, not run, so no process group is needed, and
    ``build_sharded`` allocates its shards on the meta device."""

    device_type = "meta"


@pytest.mark.parametrize("family", RELEASED)
def test_fsdp2_plan_shards_every_block_then_the_root(family, monkeypatch):
    """``tpo.sharding.build_sharded`` itself (the function ``TPOModule.configure_model`` calls), with the
    released config; ``fully_shard`` recorded instead of run."""
    calls = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **kwargs: calls.append((module, kwargs)))
    adapter = FAMILIES[family]
    model = sharding.build_sharded(adapter, str(ROOT / family), torch.bfloat16, Mesh(), "bf16-mixed",
                                   lambda m: adapter.set_trainable(m, TRAINABLE), checkpointing=True)
    units = [m for m, _ in calls]
    assert units[-1] is model and model not in units[:-1]  # the root last, once
    assert calls[-1][1]["reshard_after_forward"] is None  # a policy that trains keeps its root gathered for backward
    assert all(kw["mesh"].device_type == "meta" and kw["mp_policy"].param_dtype == torch.bfloat16
               and kw["mp_policy"].reduce_dtype == torch.float32 for _, kw in calls)

    # the units are the blocks discovery finds in the same architecture unwrapped, each inside its checkpoint
    # wrapper: every language layer and every vision layer (test_block_discovery... counts them)
    names = {id(m): n for n, m in model.named_modules()}
    block_names = [names[id(b)] for b in units[:-1]]
    wrapped = "._checkpoint_wrapped_module"  # where torch's CheckpointWrapper keeps the module it wraps
    assert all(n.endswith(wrapped) for n in block_names)
    found = blocks_by_part(family, meta_model(family))
    assert sorted(n.removesuffix(wrapped) for n in block_names) == sorted(n for ns in found.values() for n in ns)
    assert len(found["language_model"]) == model.config.get_text_config().num_hidden_layers
    assert len(found["vision_tower"]) == vision_depth(family, model.config)

    # no block holds another, and each parameter is in exactly one unit (its block's, or the root's)
    assert not any(a != b and b.startswith(a + ".") for a in block_names for b in block_names)
    owners = {}
    for name, _ in model.named_parameters():
        inside = [b for b in block_names if name.startswith(b + ".")]
        assert len(inside) <= 1, name
        owners[name] = inside[0] if inside else ""  # "" = the root unit
    assert sum(1 for o in owners.values() if o) > 0.9 * len(owners)
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("family", RELEASED)
def test_lora_targets_are_every_linear_layer_of_the_language_blocks(family):
    model = meta_model(family)
    targets = lora_targets(model, FAMILIES[family])
    layers = language_layers(model)
    index = {id(m): n for n, m in model.named_modules()}
    expected = [[f"{index[id(layer)]}.{sub}" for sub, m in layer.named_modules() if isinstance(m, nn.Linear)]
                for layer in layers]
    got = [block for kind in targets.values() for block in kind]
    assert sorted(map(tuple, got)) == sorted(map(tuple, expected))
    assert all(block for block in got)

    kinds = getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"] * len(layers)
    assert {k: len(v) for k, v in targets.items()} == {k: kinds.count(k) for k in set(kinds)}
    flat = {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for block in got for n in block}
    if family == "qwen3_5":  # the linear-attention projections a fixed name list missed
        assert {"linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.in_proj_b",
                "linear_attn.in_proj_a", "linear_attn.out_proj"} <= flat
    if family == "glm4v":  # GLM's fused MLP projection
        assert "mlp.gate_up_proj" in flat


@pytest.mark.parametrize("family", RELEASED)
def test_pair_layout_is_two_rows_only_for_recurrent_layers(family):
    config = meta_model(family).config
    layer_types = set(getattr(config.get_text_config(), "layer_types", None) or ())
    assert layout_for(config) == (TWO_PASS if family == "qwen3_5" else SHARED_PREFIX)
    assert ("linear_attention" in layer_types) == (family == "qwen3_5")


@pytest.mark.parametrize("family", RELEASED)
def test_every_parameter_belongs_to_one_part(family):
    model = meta_model(family)
    adapter = FAMILIES[family]
    parts: dict[str, int] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        part = adapter.part_of(name)
        parts[part] = parts.get(part, 0) + param.numel()
    assert set(PARTS) <= set(parts) <= set(PARTS) | {UNUSED}
    assert parts["language_model"] > max(parts["vision_tower"], parts["projector"])
    policy = sharding.empty_model(adapter, str(ROOT / family), torch.bfloat16)
    adapter.set_trainable(policy, TRAINABLE)
    trainable = {adapter.part_of(n) for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == set(TRAINABLE)


# ---- activation memory at 32 frames -------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [SHARED_PREFIX, TWO_PASS])
@pytest.mark.parametrize("family", RELEASED)
def test_activation_memory_at_32_frames_makes_no_vocabulary_tensor_over_the_prompt(family, layout):
    config = meta_model(family).config
    vocab = config.get_text_config().vocab_size
    est = estimate(family, config, layout, frames=32)
    prompt = video_tokens(family, config, 32) + PROMPT_TEXT

    assert est["prompt_tokens"] == prompt > 2 * ANSWER
    # the logits are sized by the response: at most one position per answer token and one for the prompt's
    # last position, whatever the prompt's length
    assert est["logit_positions"] <= 2 * ANSWER + 1 < prompt
    assert est["logits"] == est["logit_positions"] * vocab * 10
    longer = estimate(family, config, layout, frames=32, prompt_text=PROMPT_TEXT + 10_000)
    assert longer["logits"] == est["logits"] and longer["block_inputs"] > est["block_inputs"]
    # what every position's logits would take (TRL's layout) is the prompt-sized tensor the code never makes
    assert est["naive_logits"] >= prompt * vocab * 10 > est["logits"]
    if layout == TWO_PASS:  # the video and prompt run once per answer
        assert est["block_inputs"] > estimate(family, config, SHARED_PREFIX, frames=32)["block_inputs"]


ITEMS = [("What happens after the red square moves left?", "The blue circle moves up, then stops.", "Nothing."),
         ("In what order?", "Red then blue.", "The green square moves right, then the yellow circle moves down.")]


@functools.cache
def tiny(family: str):
    adapter = get_adapter(family)
    model, processor = adapter.load(f"builtin:tiny-{family}")
    return adapter, model.eval(), processor


@pytest.mark.parametrize("family, layout", [("qwen2_vl", SHARED_PREFIX), ("qwen2_vl", TWO_PASS),
                                            ("qwen3_5", TWO_PASS)])
def test_logit_positions_are_what_the_scoring_code_runs_the_lm_head_on(family, layout):
    """The estimate's :func:`logit_positions` checked against the code path: a hook on the output embedding of a
    tiny model of the family counts the positions the LM head sees in one scoring forward of a padded batch."""
    adapter, model, processor = tiny(family)
    rng = np.random.default_rng(0)
    items = [{"id": str(i), "question": q, "chosen": c, "rejected": r, "clip": random_clip(rng, 8)}
             for i, (q, c, r) in enumerate(ITEMS)]
    batch = pair_collator(layout, adapter, processor)(items)
    if layout == SHARED_PREFIX:
        prompts = batch["segments"][:, 0].tolist()
        answers = batch["segments"][:, 1:].tolist()
    else:
        labelled = (batch["labels"] != IGNORE_INDEX).sum(1).view(batch["answers"], -1)  # (answer, pair)
        answers = labelled.T.tolist()
        prompts = (batch["inputs"]["attention_mask"].sum(1)[: len(items)] - labelled[0]).tolist()

    seen = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda head, args, out: seen.append((args[0].shape[:-1].numel(), out.shape[-1])))
    with torch.no_grad():
        answer_logps(adapter, model, batch)
    hook.remove()

    vocab = model.config.get_text_config().vocab_size
    assert seen == [(logit_positions(layout, prompts, answers), vocab)]
    assert seen[0][0] < sum(prompts)
