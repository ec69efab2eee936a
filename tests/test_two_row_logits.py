"""The two-row layout (Qwen3.5 trains in it) applies the LM head at response-predicting positions only:
no vocabulary logits over the video and prompt, and the same log-probs as full logits give."""

import numpy as np
import pytest
import torch

from conftest import random_clip
from tpo.lora import add_lora
from tpo.models import IGNORE_INDEX, get_adapter
from tpo.two_pass import TwoPassCollator, per_answer_logps, response_logps

ITEMS = [("What happens after the red square moves left?", "The blue circle moves up, then stops.", "Nothing."),
         ("In what order?", "Red then blue.", "The green square moves right, then the yellow circle moves down.")]


def _batch(adapter, processor):
    rng = np.random.default_rng(0)
    items = [{"id": str(i), "question": q, "chosen": c, "rejected": r, "clip": random_clip(rng, 8)}
             for i, (q, c, r) in enumerate(ITEMS)]
    return TwoPassCollator(adapter, processor)(items)


@pytest.mark.parametrize("lora", [False, True])
def test_two_rows_apply_the_lm_head_at_labelled_positions_only_and_match_full_logits(lora):
    adapter = get_adapter("qwen3_5")
    model, processor = adapter.load("builtin:tiny-qwen3_5")
    if lora:
        model = add_lora(model, adapter, {"r": 4})
    model.eval()
    batch = _batch(adapter, processor)
    labels = batch["labels"]

    positions = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda head, args, out: positions.append(args[0].shape[:-1].numel()))
    with torch.no_grad():
        sums, counts = per_answer_logps(model, batch)
    hook.remove()

    labelled = int((labels != IGNORE_INDEX).sum())
    assert positions == [labelled] and labelled < labels.numel() // 2  # not every position of every row
    with torch.no_grad():
        naive_sums, naive_counts = response_logps(model(**batch["inputs"], use_cache=False).logits, labels)
    n = batch["answers"]
    torch.testing.assert_close(sums, naive_sums.view(n, -1).T, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, naive_counts.view(n, -1).T)
