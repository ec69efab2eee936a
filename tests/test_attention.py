"""The attention kernel setting (``tpo/attention.py``): FlexAttention's block mask equals the dense one,
its log-probs equal SDPA's, and the cuDNN switch follows the setting.

FlexAttention has no backward on CPU (torch 2.14), so its gradients are compared on a GPU only
(``gpu`` mark); on CPU the mask rule that decides them is compared element by element, and the forward.
"""

import numpy as np
import pytest
import torch

from conftest import random_clip
from tpo.attention import FLEX, text_attention, use_attention
from tpo.data.collate import SharedPrefixCollator
from tpo.errors import ConfigError
from tpo.models import get_adapter
from tpo.shared_prefix import pair_attention_mask, pair_block_mask, shared_prefix_logps

PAIRS = [("What happens after the red square moves left?", "The blue circle moves up, then stops.", "Nothing."),
         ("In what order?", "Red then blue.", "The green square moves right, then the yellow circle moves down.")]
# One family that declares flex support, two whose text model gets our registered function, and Gemma 4,
# whose block masks come from its own per-layer-type masks (sliding window, bidirectional frames).
FLEX_FAMILIES = ["llava_onevision", "qwen2_5_vl", "qwen3_vl", "gemma4"]


def _batch(family, device="cpu"):
    adapter = get_adapter(family)
    model, processor = adapter.load(f"builtin:tiny-{family}")
    rng = np.random.default_rng(0)
    items = [{"id": str(i), "question": q, "chosen": c, "rejected": r, "clip": random_clip(rng, 8)}
             for i, (q, c, r) in enumerate(PAIRS)]
    batch = SharedPrefixCollator(adapter, processor)(items)
    batch["inputs"] = {k: v.to(device) for k, v in batch["inputs"].items()}
    return adapter, model.to(device), batch


def test_block_mask_is_the_dense_mask_element_by_element():
    from torch.nn.attention.flex_attention import create_mask

    segments = torch.tensor([[5, 3, 2], [4, 1, 4], [6, 2, 0]])  # prompt, chosen, rejected; padding after
    length = 12
    block = pair_block_mask(segments, length)
    dense = create_mask(block.mask_mod, len(segments), 1, length, length, device="cpu")
    assert torch.equal(dense, pair_attention_mask(segments, length))


@pytest.fixture
def fresh_compile():
    """Each family's shapes compiled on their own: torch 2.14's CPU code generation for FlexAttention
    fails when a second family's shapes make it recompile with dynamic shapes."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("family", FLEX_FAMILIES)
def test_flex_attention_logps_equal_sdpa(family, fresh_compile):
    adapter, model, batch = _batch(family)
    model.eval()
    with torch.no_grad():
        sdpa = torch.cat(shared_prefix_logps(adapter, model, batch)[0])
        use_attention(model, "flex_attention")
        assert text_attention(model) == FLEX
        assert model.config.vision_config._attn_implementation == "sdpa"  # the vision encoder keeps SDPA
        flex = torch.cat(shared_prefix_logps(adapter, model, batch)[0])
    assert torch.allclose(flex, sdpa, rtol=1e-5, atol=1e-4)
    use_attention(model, "sdpa")
    assert text_attention(model) == "sdpa"


def test_the_cudnn_switch_follows_the_setting():
    _, model, _ = _batch("llava_onevision")
    try:
        use_attention(model, "sdpa_no_cudnn")
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        use_attention(model, "sdpa")
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)


def test_unknown_attention_is_a_clear_error():
    from tpo.module import TPOModule

    with pytest.raises(ConfigError, match="unknown attention 'flash'"):
        TPOModule("builtin:tiny-llava_onevision", "llava_onevision", attention="flash")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs a GPU")
@pytest.mark.parametrize("family", FLEX_FAMILIES)
def test_flex_attention_gradients_equal_sdpa_on_gpu(family):
    adapter, model, batch = _batch(family, "cuda")
    model.train()
    grads = {}
    for kind in ("sdpa_no_cudnn", "flex_attention"):
        use_attention(model, kind)
        model.zero_grad()
        logps = torch.cat(shared_prefix_logps(adapter, model, batch)[0])
        (logps * torch.tensor([1.0, 0.5, -0.7, 2.0], device="cuda")).sum().backward()
        grads[kind] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in grads["sdpa_no_cudnn"].items():
        assert torch.allclose(grads["flex_attention"][name], grad, rtol=1e-3, atol=1e-5), name


def test_flex_attention_training_on_cpu_is_a_clear_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "lightning_configs" / "demo.yaml"
    done = subprocess.run([sys.executable, "-m", "tpo", "fit", "--config", str(config), "--trainer.default_root_dir",
                           str(tmp_path), "--model.attention", "flex_attention", "--trainer.max_steps", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "error: model.attention flex_attention trains on GPUs only" in done.stderr and "Traceback" not in done.stderr
