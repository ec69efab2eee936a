"""LoRA adapts every linear layer of the language model's blocks, whatever the family names them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from peft.tuners.lora import LoraLayer
from torch import nn

from conftest import FAMILIES
from tpo.lora import add_lora
from tpo.models import get_adapter

REPO = Path(__file__).resolve().parents[1]
LANGUAGE_BLOCK = re.compile(r"model\.language_model\.layers\.\d+\.")
# Layers a list of the usual projection names (q_proj ... down_proj) would miss.
OWN_NAMES = {"qwen3_5": {"in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"},
             "glm4v": {"gate_up_proj"}}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_adapts_every_linear_layer_in_the_language_model_blocks(family):
    adapter = get_adapter(family)
    model, _ = adapter.load(f"builtin:tiny-{family}")
    linear = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and LANGUAGE_BLOCK.match(name)}
    peft_model = add_lora(model, adapter, {"r": 4})
    adapted = {name.removeprefix("base_model.model.") for name, m in peft_model.named_modules()
               if isinstance(m, LoraLayer)}
    assert adapted == linear
    assert OWN_NAMES.get(family, set()) <= {name.rsplit(".", 1)[1] for name in adapted}
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)


def test_fit_summary_counts_adapted_layers_per_block_kind(tmp_path, pref_file):
    """Qwen3.5's tiny model: one linear-attention block (5 projections and an MLP of 3), one full-attention block."""
    cmd = [sys.executable, "-m", "tpo", "fit", "--config", str(REPO / "lightning_configs/demo.yaml"),
           "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1", "--data.path", str(pref_file),
           "--data.val_fraction", "0.25", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
           "--model.family", "qwen3_5", "--model.model_path", "builtin:tiny-qwen3_5", "--model.lora", "{r: 4}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LoRA: 8 linear layers in 1 linear_attention block, 7 linear layers in 1 full_attention block" in done.stdout
