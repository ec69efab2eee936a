"""A tiny model of every supported family trains through the same TPOModule."""

import numpy as np
import pytest
import torch

from conftest import FAMILIES, random_clip
from tpo.data.datamodule import PreferenceDataModule
from tpo.evaluate.model import VideoAnswerer, infer_family, load_for_eval
from tpo.models import UNUSED, get_adapter
from tpo.module import TPOModule


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward_through_tpo_module(family, pref_file):
    module = TPOModule(f"builtin:tiny-{family}", family, beta=0.1, alpha=1.0)
    module.configure_model()
    dm = PreferenceDataModule(str(pref_file), batch_size=2)
    dm.connect(module)
    dm.setup("fit")
    batch = dm.collator([dm.train_set[0], dm.train_set[1]])
    out = module.compute_loss(batch)
    # policy == reference at the start: every reward is exactly zero, DPO loss is log 2
    assert out["rewards/chosen"].item() == 0 and out["rewards/rejected"].item() == 0
    assert out["loss_dpo"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)
    out["loss"].backward()
    adapter = get_adapter(family)
    grads = {adapter.part_of(n): 0.0 for n, _ in module.policy.named_parameters()}
    for name, p in module.policy.named_parameters():
        part = adapter.part_of(name)
        assert p.requires_grad == (part not in ("vision_tower", UNUSED)), name
        if p.grad is not None:
            grads[part] += p.grad.abs().sum().item()
    assert grads["language_model"] > 0 and grads["projector"] > 0 and grads["vision_tower"] == 0
    assert all(p.grad is None and not p.requires_grad for p in module.reference.model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_sharding_finds_language_and_vision_blocks(family):
    adapter = get_adapter(family)
    model, _ = adapter.load(f"builtin:tiny-{family}")
    blocks = tuple(adapter.block_classes(model))
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, blocks)]
    by_part = {}
    for name, _ in found:
        by_part.setdefault(adapter.part_of(name), []).append(name)
    # every decoder layer, some vision layers, nothing of the projector
    assert set(by_part) == {"language_model", "vision_tower"}, by_part
    assert len(by_part["language_model"]) == model.config.get_text_config().num_hidden_layers
    for name, block in found:
        # a layer, not a whole tower or an embedding: it holds no embedding, patch convolution or other block
        inner = list(block.modules())[1:]
        assert not any(isinstance(m, (torch.nn.Embedding, torch.nn.Conv2d, torch.nn.Conv3d, *blocks)) for m in inner), name


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)


class _VisionLayer(torch.nn.Module):  # declares only its attention unsplittable (as Idefics3 / SmolVLM do)
    def __init__(self):
        super().__init__()
        self.attention, self.mlp = _Attention(), torch.nn.Linear(4, 4)


class _TextLayer(_VisionLayer):
    pass


class _Stage(torch.nn.Module):  # a stack of stacks: only the inner layers are blocks
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([_TextLayer(), _TextLayer()])


class _Embedding(torch.nn.Embedding):
    pass


class _Model(torch.nn.Module):
    _no_split_modules = ["_Attention", "_TextLayer", "_Embedding"]

    def __init__(self):
        super().__init__()
        self.embed = _Embedding(8, 4)  # declared, but not a stack's layer
        self.vision = torch.nn.ModuleList([_VisionLayer()])
        self.mergers = torch.nn.ModuleList([torch.nn.Linear(4, 4)])  # a stack of undeclared modules
        self.stages = torch.nn.ModuleList([_Stage()])


def test_blocks_are_declared_layers_of_a_stack_and_hold_no_other_block():
    assert get_adapter("internvl").block_classes(_Model()) == {_VisionLayer, _TextLayer}


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluation_loads_the_family_and_batched_generation_matches_one_at_a_time(family):
    """Left padding (and, for M-RoPE models, 3-D positions of a padded batch) must not change answers."""
    assert infer_family(f"builtin:tiny-{family}") == family
    adapter, model, processor = load_for_eval(f"builtin:tiny-{family}", dtype=torch.float32, device="cpu")
    rng = np.random.default_rng(0)
    videos = [random_clip(rng) for _ in range(2)]
    questions = ["Which?", "In what order do the shapes move after the red square, and which one stops last?"]
    answer = VideoAnswerer(adapter, model, processor, max_new_tokens=6)
    batched = answer(videos, questions)
    assert batched == [answer([v], [q])[0] for v, q in zip(videos, questions)]
    assert all(batched)


def test_trainable_parts_are_configurable():
    module = TPOModule("builtin:tiny-llava_onevision", "llava_onevision", trainable=("projector",))
    module.configure_model()
    trainable = {n.split(".")[1] for n, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable == {"multi_modal_projector", "image_newline"}
    with pytest.raises(ValueError, match="unknown trainable part"):
        get_adapter("qwen2_vl").set_trainable(module.policy, ["llm"])
