"""The toy base model: a small LLaVA-OneVision trained from scratch on the toy world.

Supervised fine-tuning on ground-truth captions ("Describe the video.") and multiple-choice
questions answered with the option's text makes it a competent base. It is kept *temporally
sloppy* on purpose, the way real video-LMMs are: it sees few questions about what comes right
before or after an object (``order_share``), so it has to get order from the captions task.

``toy_base_path()`` builds it once (deterministic, a few minutes on 2 CPU cores) and caches it
under ``$TPO_CACHE`` like the other built-in models.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from toy.world import answer_text, name, questions
from tpo.data.collate import labelled_sequence, pad_rows
from tpo.data.frames import read_clip, uniform_frame_indices
from tpo.evaluate.answers import mcq_prompt
from tpo.models import IGNORE_INDEX, get_adapter, pad_token_id
from tpo.synthetic.tiny_models import build_llava_onevision, build_once, cache_dir
from tpo.synthetic.world import Event, random_events, render_frames, write_video

FAMILY = "llava_onevision"
NUM_FRAMES = 16  # frames the toy model sees, in data generation, training and evaluation
DESCRIBE = "Describe the video."
EVENTS_PER_CLIP = (1, 2, 3, 4)  # clips of one or two events (described only) ground colours and shapes first
_VERSION = "1"


@dataclass(frozen=True)
class ToyBaseConfig:
    num_clips: int = 1000
    describe_steps: int = 500  # first only "Describe the video." (grounding), then the full mix
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3
    order_share: float = 0.1  # share of "right after / right before" questions kept in the SFT mix
    hidden_size: int = 192
    num_layers: int = 4
    seed: int = 0


def describe(events: list[Event]) -> str:
    text = ", then ".join(f"{name(e)} moves {e.motion}" for e in events)
    return text[0].upper() + text[1:] + "."


def toy_corpus() -> list[str]:
    """Text the toy tokenizer is trained on: every name, option, question and answer form."""
    rng = random.Random(0)
    text = [DESCRIBE]
    for _ in range(300):
        events = random_events(rng, rng.choice([3, 4]))
        text.append(describe(events))
        for q in questions(events, rng):
            text.append(mcq_prompt(q["question"], q["options"]))
            text.append(answer_text(q["options"][q["answer"]]))
    return text


def build_toy_model(cfg: ToyBaseConfig):
    heads = cfg.hidden_size // 32
    text = dict(hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=heads, num_key_value_heads=heads)
    torch.manual_seed(cfg.seed)
    return build_llava_onevision(toy_corpus(), text=text, vision=dict(hidden_size=64, intermediate_size=128))


def sft_examples(events: list[Event], rng: random.Random, order_share: float) -> list[tuple[str, str]]:
    """(prompt, reply) pairs for one clip: its description and its questions."""
    examples = [(DESCRIBE, describe(events))]
    for q in questions(events, rng) if len(events) >= 3 else []:
        if q["question"].startswith("What appears right") and rng.random() >= order_share:
            continue
        examples.append((mcq_prompt(q["question"], q["options"]), answer_text(q["options"][q["answer"]])))
    return examples


def _encode_clips(cfg: ToyBaseConfig, adapter, processor, workdir: Path) -> list[dict]:
    """Every SFT example tokenised; the clip's vision tensors are shared by its examples."""
    rng = random.Random(cfg.seed)
    rows = []
    for c in tqdm(range(cfg.num_clips), desc="toy base: clips", leave=False):
        events = random_events(rng, rng.choice(EVENTS_PER_CLIP))
        path = workdir / "clip.mp4"  # written and decoded, so training sees what evaluation sees
        write_video(path, render_frames(events, 8))
        clip = read_clip(path, uniform_frame_indices(8 * len(events), NUM_FRAMES))
        vision = None
        for prompt, reply in sft_examples(events, rng, cfg.order_share):
            enc = adapter.encode_prompt(processor, clip, prompt)
            vision = vision or {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in enc.vision.items()}
            rows.append({"seq": labelled_sequence(enc.tokens, adapter.response_ids(processor, reply)), "vision": vision,
                         "describe": prompt == DESCRIBE})
    return rows


def _batch(rows: list[dict], pad_id: int) -> dict:
    seqs = [r["seq"] for r in rows]
    inputs = {k: pad_rows([s[k] for s in seqs], pad_id if k == "input_ids" else 0) for k in seqs[0] if k != "labels"}
    for key, value in rows[0]["vision"].items():
        cat = torch.cat([r["vision"][key] for r in rows])
        inputs[key] = cat.float() if cat.is_floating_point() else cat
    return {**inputs, "labels": pad_rows([s["labels"] for s in seqs], IGNORE_INDEX)}


def train_toy_base(out: Path, cfg: ToyBaseConfig) -> Path:
    adapter = get_adapter(FAMILY)
    model, processor = build_toy_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        rows = _encode_clips(cfg, adapter, processor, Path(tmp))
    pad_id = pad_token_id(processor)
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, cfg.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0))))
    described = [r for r in rows if r["describe"]]
    model.train()
    bar = tqdm(range(cfg.steps), desc="toy base: SFT")
    for step in bar:
        pool = described if step < cfg.describe_steps else rows
        pick = torch.randint(len(pool), (cfg.batch_size,), generator=gen).tolist()
        loss = model(**_batch([pool[i] for i in pick], pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    (out / "toy_base.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out


def toy_base_path(cfg: ToyBaseConfig = ToyBaseConfig()) -> Path:
    """The toy base model for ``cfg``, trained on first use and cached."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return build_once(cache_dir() / f"toy-base-v{_VERSION}-{digest}", lambda tmp: train_toy_base(tmp, cfg),
                      "config.json")

