"""The toy base model: a small LLaVA-OneVision trained from scratch on the toy world.

Supervised fine-tuning makes it a competent base with the weakness the paper's method targets. It
is trained *mostly on short clips*: one to four objects shown as densely as a long clip's
(``FRAMES_PER_OBJECT`` frames each), described ("Describe the video.") and asked about (which way
an object moves; with three or four objects, what appears right after / right before another,
the clip's other objects being the first distractors, so the direction matters). A
``long_share`` of its clips are long ones (eight objects in 32 frames), described and asked about
as a whole (first, last, how many move the first one's way), with only a ``long_moment_share`` of
their moment questions kept: the share that makes the base *partly* grounded on long clips, as
real video-LMMs are. It is chosen once, by a rule fixed before any TPO run
(``benchmarks/toy_calibration.py``). Shown frames without the moment asked about, the base still
answers in the question's form, about some other moment.

The loss is ``transformers``' token mean, so the descriptions (many tokens) carry most of the
gradient: describing the clip is what teaches the model to read the video at all, and answers in
the descriptions' words reuse it. (Weighting every answer equally, or packing a clip's questions
into one conversation, left 192-wide bases that never read the video in 800–1,000 steps.)

``toy_base_path(cfg)`` builds it once (deterministic for a machine and thread count, about 13 min
on one core) and caches it under ``$TPO_CACHE`` like the other built-in models. ``cfg.seed`` draws
both the clips and the initial weights: each seed of the reproduction has its own base.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from toy.world import (FRAMES_PER_EVENT, after_question, answer_text, before_question, clip_questions, describe,
                       long_events, moment_questions, motion_question, short_events, shown_frames, write_clip)
from tpo.data.frames import read_clip, uniform_frame_indices
from tpo.evaluate.answers import mcq_prompt
from tpo.models import get_adapter, pad_token_id
from tpo.synthetic.tiny_builders import build_llava_onevision
from tpo.synthetic.tiny_models import build_once, cache_dir
from tpo.two_pass import labelled_batch, labelled_row
from tpo.synthetic.world import Event

FAMILY = "llava_onevision"
DESCRIBE = "Describe the video."
_VERSION = "7"  # 7: transformers' warm-up cosine schedule


@dataclass(frozen=True)
class ToyBaseConfig:
    num_clips: int = 800
    describe_steps: int = 200  # first only "Describe the video." (grounding), then the full mix
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    long_share: float = 0.3  # share of long clips; the others show one to four objects
    long_moment_share: float = 0.3  # share of a long clip's moment questions kept in the mix (calibrated)
    hidden_size: int = 192
    num_layers: int = 4
    seed: int = 0


def toy_corpus() -> list[str]:
    """Text the toy tokenizer is trained on: every name, option, question and answer form."""
    rng = random.Random(0)
    text = [DESCRIBE]
    for _ in range(300):
        events = long_events(rng)
        text.append(describe(events))
        for q in [q for q, _ in moment_questions(events, rng)] + clip_questions(events, rng):
            text.append(mcq_prompt(q["question"], q["options"]))
            text.append(answer_text(q))
    return text


def build_toy_model(cfg: ToyBaseConfig):
    heads = cfg.hidden_size // 32
    text = dict(hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=heads, num_key_value_heads=heads)
    torch.manual_seed(cfg.seed)
    return build_llava_onevision(toy_corpus(), text=text, vision=dict(hidden_size=64, intermediate_size=128))


def short_clip_examples(events: list[Event], rng: random.Random) -> list[tuple[str, str]]:
    """(prompt, reply) pairs for a clip of one to four objects: up to two motions, and with three or
    more objects (where the direction matters) one after and one before."""
    colours = [e.colour for e in events]
    moving = rng.sample(events, min(2, len(events)))
    examples = [(DESCRIBE, describe(events)), *(_example(motion_question(e.colour, e.motion, rng)) for e in moving)]
    if len(events) >= 3:
        examples += [_example(after_question(colours, rng.randrange(len(events) - 1), rng)),
                     _example(before_question(colours, rng.randrange(1, len(events)), rng))]
    return examples


def long_clip_examples(events: list[Event], rng: random.Random, moment_share: float) -> list[tuple[str, str]]:
    """(prompt, reply) pairs for a long clip: whole-clip questions, few moment questions."""
    moments = [_example(q) for q, _ in moment_questions(events, rng) if rng.random() < moment_share]
    return [(DESCRIBE, describe(events))] + [_example(q) for q in clip_questions(events, rng)] + moments


def _example(q: dict) -> tuple[str, str]:
    return mcq_prompt(q["question"], q["options"]), answer_text(q)


def _encode_clips(cfg: ToyBaseConfig, adapter, processor, workdir: Path) -> list[dict]:
    """Every SFT example tokenised; the clip's vision tensors are shared by its examples."""
    rng = random.Random(cfg.seed)
    rows = []
    for _ in tqdm(range(cfg.num_clips), desc="toy base: clips", leave=False):
        long = rng.random() < cfg.long_share
        events = long_events(rng) if long else short_events(rng, rng.choice((1, 2, 3, 4)))
        path = workdir / "clip.mp4"  # written and decoded, so training sees what evaluation sees
        write_clip(path, events)
        clip = read_clip(path, uniform_frame_indices(FRAMES_PER_EVENT * len(events), shown_frames(events)))
        examples = long_clip_examples(events, rng, cfg.long_moment_share) if long else short_clip_examples(events, rng)
        vision = None
        for prompt, reply in examples:
            enc = adapter.encode_prompt(processor, clip, prompt)
            if vision is None:  # stored in bf16 to keep the encoded set small
                vision = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in enc.vision.items()}
            rows.append({"seq": labelled_row(enc.tokens, adapter.response_ids(processor, reply)), "vision": vision,
                         "describe": prompt == DESCRIBE})
    return rows


def _by_frame_count(rows: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row["vision"]["pixel_values_videos"].shape), []).append(row)
    return list(groups.values())


def _batch(rows: list[dict], pad_id: int) -> dict:
    visions = [{k: v.float() if v.is_floating_point() else v for k, v in r["vision"].items()} for r in rows]
    batch = labelled_batch([r["seq"] for r in rows], visions, pad_id)
    return {**batch["inputs"], "labels": batch["labels"]}


def train_toy_base(out: Path, cfg: ToyBaseConfig) -> Path:
    adapter = get_adapter(FAMILY)
    model, processor = build_toy_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        rows = _encode_clips(cfg, adapter, processor, Path(tmp))
    pad_id = pad_token_id(processor)
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, cfg.steps // 20), cfg.steps)
    described = [r for r in rows if r["describe"]]
    model.train()
    bar = tqdm(range(cfg.steps), desc="toy base: SFT")
    for step in bar:
        pool = described if step < cfg.describe_steps else rows
        pick = [pool[i] for i in torch.randint(len(pool), (cfg.batch_size,), generator=gen).tolist()]
        loss = 0.0
        for group in _by_frame_count(pick):  # a batch's clips must have one frame count
            part = model(**_batch(group, pad_id)).loss * len(group) / len(pick)
            part.backward()
            loss += part.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    (out / "toy_base.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out


def toy_base_path(cfg: ToyBaseConfig = ToyBaseConfig()) -> Path:
    """The toy base model for ``cfg``, trained on first use and cached."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return build_once(cache_dir() / f"toy-base-v{_VERSION}-{digest}", lambda tmp: train_toy_base(tmp, cfg),
                      "config.json")

