"""Training's scoring (shared-prefix packing, or two rows per pair where packing is not exact) equals
one independent forward per answer: log-probs and gradients, every family."""

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen3_5Config

from conftest import FAMILIES, random_clip
from tpo.data.collate import SharedPrefixCollator
from tpo.data.datamodule import PreferenceDataModule
from tpo.evaluate.likelihood import LikelihoodScorer
from tpo.module import TPOModule
from tpo.scoring import SHARED_PREFIX, TWO_PASS, layout_for, pair_collator, pair_logps, unmaskable_layer_types
from tpo.two_pass import TwoPassCollator, labelled_row, response_logps
from tpo.models import get_adapter
from tpo.shared_prefix import pair_attention_mask, pair_position_ids, shared_prefix_logps

PAIRS = [("What happens after the red square moves left?", "The blue circle moves up, then stops.", "Nothing."),
         ("In what order?", "Red then blue.", "The green square moves right, then the yellow circle moves down.")]


def _items(frames=8):
    rng = np.random.default_rng(0)
    return [{"id": str(i), "question": q, "chosen": c, "rejected": r, "clip": random_clip(rng, frames)}
            for i, (q, c, r) in enumerate(PAIRS)]


def _grads(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def _one_forward_per_answer(adapter, processor, model, items) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts, (chosen of every pair, then rejected of every pair), each answer
    scored after its prompt in a forward of its own: no packing, no padding, nothing shared."""
    logps, counts = [], []
    for side in ("chosen", "rejected"):
        for item in items:
            prompt = adapter.encode_prompt(processor, item["clip"], item["question"])
            row = labelled_row(prompt.tokens, adapter.response_ids(processor, item[side]))
            labels = row.pop("labels")[None]
            out = model(**{k: v[None] for k, v in row.items()}, **prompt.vision)
            s, c = response_logps(out.logits, labels)
            logps.append(s)
            counts.append(c)
    return torch.cat(logps), torch.cat(counts)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_equals_two_passes(family):
    """Through training's entry points (the layout its module detects, its collator, its scoring)."""
    adapter = get_adapter(family)
    model, processor = adapter.load(f"builtin:tiny-{family}")
    model.train()
    items = _items()
    layout = TPOModule(f"builtin:tiny-{family}", family).layout
    batch = pair_collator(layout, adapter, processor)(items)
    weights = torch.tensor([1.0, 0.5, -0.7, 2.0])  # distinct weights per sequence

    alone_logps, alone_counts = _one_forward_per_answer(adapter, processor, model, items)
    (alone_logps * weights).sum().backward()
    alone_grads = _grads(model)

    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    logps, counts = map(torch.cat, pair_logps(adapter, model, batch))
    hook.remove()
    (logps * weights).sum().backward()
    grads = _grads(model)

    torch.testing.assert_close(logps, alone_logps, rtol=1e-5, atol=1e-4)
    assert torch.equal(counts, alone_counts)
    assert set(grads) == set(alone_grads)
    scale = max(g.abs().max() for g in alone_grads.values())
    for name, grad in alone_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
    if layout == SHARED_PREFIX:
        # The LM head saw positions from the first response-predicting one on, never the video or prompt.
        first_response = int(batch["segments"][:, 0].min()) - 1
        assert seen == [batch["inputs"]["input_ids"].shape[1] - first_response]
    # One row (and one video) per pair, or, where packing is not exact, one per answer.
    assert batch["inputs"]["input_ids"].shape[0] == {SHARED_PREFIX: 2, TWO_PASS: 4}[layout]


def test_layout_is_detected_from_the_layer_types():
    full = Qwen2Config(num_hidden_layers=2, layer_types=["full_attention"] * 2)
    sliding = Qwen2Config(num_hidden_layers=2, layer_types=["full_attention", "sliding_attention"])
    hybrid = Qwen3_5Config(text_config={"num_hidden_layers": 4})  # its default: linear attention, full every 4th
    # sliding windows are carried onto the packed row by the model's own masks (the Gemma 4 test below)
    assert [layout_for(c) for c in (full, sliding, hybrid)] == [SHARED_PREFIX, SHARED_PREFIX, TWO_PASS]
    assert unmaskable_layer_types(hybrid) == ["linear_attention"] and unmaskable_layer_types(sliding) == []


def test_packing_gives_wrong_logps_for_qwen3_5s_recurrent_layers_so_training_scores_two_rows(pref_file):
    """Qwen3.5's linear-attention layers carry the chosen answer's state into the rejected one."""
    family = "qwen3_5"
    adapter = get_adapter(family)
    model, processor = adapter.load(f"builtin:tiny-{family}")
    items = _items()
    with torch.no_grad():
        packed = torch.cat(shared_prefix_logps(adapter, model, SharedPrefixCollator(adapter, processor)(items))[0])
        alone, _ = _one_forward_per_answer(adapter, processor, model, items)
    # chosen follows the prompt in both; rejected, packed, follows the chosen answer's recurrent state
    torch.testing.assert_close(packed[:2], alone[:2], rtol=1e-5, atol=1e-4)
    assert ((packed[2:] - alone[2:]).abs() > 1e-3).all(), (packed, alone)
    # so the model is detected, and training, its reference and likelihood scoring use one row per answer
    module = TPOModule(f"builtin:tiny-{family}", family)
    assert module.layout == TWO_PASS and "linear_attention" in module.layout_description
    dm = PreferenceDataModule(str(pref_file))
    dm.connect(module)
    assert isinstance(dm.collator, TwoPassCollator)
    module.configure_model()
    batch = dm.collator(items)
    with torch.no_grad():
        reference = torch.cat(module.reference.logps(batch))
        precomputed = module.predict_step(batch, 0)  # what `tpo precompute-ref` writes
    torch.testing.assert_close(reference, alone, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.tensor(list(precomputed.values())).T.flatten(), alone, rtol=1e-5, atol=1e-4)
    assert LikelihoodScorer(adapter, model, processor).layout == TWO_PASS


def test_block_mask_keeps_rejected_away_from_chosen():
    segments = torch.tensor([[3, 2, 2], [2, 1, 1]])  # (prompt, chosen, rejected) lengths
    mask = pair_attention_mask(segments, 7)[:, 0]
    row = mask[0].int().tolist()
    assert row[5] == [1, 1, 1, 0, 0, 1, 0]  # first rejected token: prompt + itself, not chosen
    assert row[4] == [1, 1, 1, 1, 1, 0, 0]  # last chosen token: prompt + chosen, causal
    assert mask[1, 4:, :4].sum() == 0 and all(mask[1, i, i] for i in range(7))  # padding sees itself only


def test_positions_restart_for_the_rejected_answer():
    segments = torch.tensor([[3, 2, 2]])
    inputs = {"input_ids": torch.zeros(1, 7, dtype=torch.long)}
    assert pair_position_ids(get_adapter("llava_onevision"), None, inputs, segments).tolist() == [[0, 1, 2, 3, 4, 3, 4]]


def test_mrope_is_detected_from_the_model_also_through_a_lora_wrapper():
    from tpo.lora import add_lora

    adapter = get_adapter("qwen3_vl")
    model, _ = adapter.load("builtin:tiny-qwen3_vl")
    assert adapter.rope_index(model) == model.model.get_rope_index
    assert adapter.rope_index(add_lora(model, adapter, {"r": 4})) == model.model.get_rope_index
    llava = get_adapter("llava_onevision")
    assert llava.rope_index(llava.load("builtin:tiny-llava_onevision")[0]) is None


def test_three_answers_see_the_prompt_and_themselves_and_restart_positions():
    segments = torch.tensor([[2, 2, 1, 2], [2, 1, 2, 0]])  # (prompt, answer 1..3); row 2 has an empty third answer
    mask = pair_attention_mask(segments, 7)[:, 0].int().tolist()
    assert mask[0][4] == [1, 1, 0, 0, 1, 0, 0]  # answer 2: prompt and itself, not answer 1
    assert mask[0][6] == [1, 1, 0, 0, 0, 1, 1]  # answer 3's last token: prompt and answer 3 so far
    assert mask[1][4] == [1, 1, 0, 1, 1, 0, 0] and mask[1][5] == [0, 0, 0, 0, 0, 1, 0]  # then padding
    inputs = {"input_ids": torch.zeros(2, 7, dtype=torch.long)}
    positions = pair_position_ids(get_adapter("llava_onevision"), None, inputs, segments)
    assert positions.tolist() == [[0, 1, 2, 3, 2, 2, 3], [0, 1, 2, 2, 3, 5, 6]]


def test_gemma4_packed_masks_keep_the_sliding_window_and_bidirectional_frames():
    """Gemma 4's own masks on the packed row: its sliding layers see the last ``sliding_window`` tokens of
    the ordinary row (the rejected answer counts from the prompt's end) and, within a frame, later vision
    tokens too; its global layers are causal."""
    from tpo.data.collate import SharedPrefixCollator
    from tpo.shared_prefix import mask_builder, model_pair_masks

    adapter = get_adapter("gemma4")
    model, processor = adapter.load("builtin:tiny-gemma4")
    batch = SharedPrefixCollator(adapter, processor)(_items()[:1])
    masks = model_pair_masks(model, mask_builder(model), batch["inputs"], batch["segments"])
    sliding, full = masks["sliding_attention"][0, 0], masks["full_attention"][0, 0]
    window = model.config.text_config.sliding_window
    p, c, r = batch["segments"][0].tolist()
    assert p > 4 * window and r < window
    last = p + c + r - 1  # the rejected answer's last token: index p + r - 1 in its ordinary row
    expected = torch.zeros(p + c + r, dtype=torch.bool)
    expected[p + r - window:p] = True
    expected[p + c:] = True
    assert torch.equal(sliding[last], expected)
    assert torch.equal(full[last], torch.cat([torch.ones(p), torch.zeros(c), torch.ones(r)]).bool())
    video = (batch["inputs"]["input_ids"][0] == processor.video_token_id).nonzero()[:, 0]
    first, per_frame = video[0].item(), len(video) // len(_items()[0]["clip"])
    frame_end, next_frame = video[per_frame - 1].item(), video[per_frame].item()
    assert sliding[first, frame_end] and not full[first, frame_end]  # bidirectional within its frame
    assert frame_end - first >= window and not sliding[frame_end, first]  # the window still bounds the past
    assert not sliding[first, next_frame]  # frames are separate blocks
