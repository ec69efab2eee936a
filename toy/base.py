"""The toy base model: a small LLaVA-OneVision trained from scratch on the toy world.

Supervised fine-tuning makes it a competent base with the weakness the paper's method targets. It
is trained *mostly on short clips*: one to four objects shown as densely as a long clip's
(``FRAMES_PER_OBJECT`` frames each), described ("Describe the video.") and, with three or four
objects, asked what appears right after / right before another (the clip's other objects being the
first distractors, so the direction matters). A ``long_share`` of its clips are long ones (eight
objects in 32 frames), described and asked about as a whole (first, last); only in the last
``share_steps`` are a ``long_moment_share`` of their moment questions trained on: the share that
makes the base *partly* grounded on long clips, as real video-LMMs are. It is chosen once, by a
rule fixed before any TPO run (``benchmarks/toy_calibration.py``); every share's base branches from
one common run (:mod:`toy.base_checkpoints`).

The loss is ``transformers``' token mean, so the descriptions (many tokens) carry most of the
gradient: describing the clip is what teaches the model to read the video at all.

There is one base for every seed of the reproduction, as the paper has one LongVA: trained once
(``python -m toy.base --out DIR --ship``, about 25 min on one core, resumable) and committed in
``SHIPPED`` with its recipe, training log and sha256 sums. ``toy_base_path(cfg)`` returns it when
``cfg`` is its recipe, and otherwise trains the base of ``cfg`` once and caches it under
``$TPO_CACHE`` (deterministic for a machine and thread count).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from toy.base_checkpoints import CheckpointStore, TrainingState
from toy.world import (FRAMES_PER_EVENT, after_question, answer_text, before_question, clip_questions, describe,
                       long_events, moment_questions, short_events, shown_frames, write_clip)
from tpo.data.frames import read_clip, uniform_frame_indices
from tpo.evaluate.answers import mcq_prompt
from tpo.models import get_adapter, pad_token_id
from tpo.synthetic.tiny_builders import build_llava_onevision
from tpo.synthetic.tiny_models import build_once, cache_dir
from tpo.two_pass import labelled_batch, labelled_row
from tpo.synthetic.world import Event

FAMILY = "llava_onevision"
SHIPPED = Path(__file__).parent / "base_model"  # the committed base (issue 31): one for every seed
DESCRIBE = "Describe the video."
# of the world and the base recipe code; 8: the hand-over world (issue 31), phases and checkpoints;
# 9: objects still, large and centred
TOY_VERSION = "9"


@dataclass(frozen=True)
class ToyBaseConfig:
    num_clips: int = 3000
    describe_steps: int = 150  # first only "Describe the video." (grounding), then the full mix
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    long_share: float = 0.3  # share of long clips; the others show one to four objects
    long_moment_share: float = 0.3  # share of a long clip's moment questions kept in the mix (calibrated)
    share_steps: int = 300  # the last steps, the only ones the share acts in
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


def build_toy_model(cfg: ToyBaseConfig, vision: dict | None = None):
    """``vision`` overrides the vision tower's config (probes: ``benchmarks/toy_vision_gate.py``)."""
    heads = cfg.hidden_size // 32
    text = dict(hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=heads, num_key_value_heads=heads)
    torch.manual_seed(cfg.seed)
    return build_llava_onevision(toy_corpus(), text=text,
                                 vision={**dict(hidden_size=64, intermediate_size=128), **(vision or {})})


def short_clip_examples(events: list[Event], rng: random.Random) -> list[tuple[str, str]]:
    """(prompt, reply) pairs for a clip of one to four objects: its description, and with three or
    more objects (where the direction matters) one after and one before."""
    colours = [e.colour for e in events]
    examples = [(DESCRIBE, describe(events))]
    if len(events) >= 3:
        examples += [_example(after_question(colours, rng.randrange(len(events) - 1), rng)),
                     _example(before_question(colours, rng.randrange(1, len(events)), rng))]
    return examples


def long_clip_examples(events: list[Event], rng: random.Random) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(prompt, reply) pairs for a long clip: the whole-clip ones, and its moment questions (of which
    only a ``long_moment_share`` is trained on, in the last phase)."""
    moments = [_example(q) for q, _ in moment_questions(events, rng)]
    return [(DESCRIBE, describe(events))] + [_example(q) for q in clip_questions(events, rng)], moments


def _example(q: dict) -> tuple[str, str]:
    return mcq_prompt(q["question"], q["options"]), answer_text(q)


def _encode_clips(cfg: ToyBaseConfig, adapter, processor, workdir: Path) -> list[dict]:
    """Every SFT example tokenised; the clip's vision tensors are shared by its examples. A row's
    ``phase`` says from which phase on it is trained: ``describe`` from the first step, ``mix``
    after the describe-only steps, ``long_moment`` (a long clip's moment question) only in the last
    phase, and only if its ``draw`` is below the share. The draws do not depend on the share, so
    every share's base branches from one common run."""
    rng = random.Random(cfg.seed)
    rows = []
    for _ in tqdm(range(cfg.num_clips), desc="toy base: clips", leave=False):
        long = rng.random() < cfg.long_share
        events = long_events(rng) if long else short_events(rng, rng.choice((1, 2, 3, 4)))
        path = workdir / "clip.mp4"  # written and decoded, so training sees what evaluation sees
        write_clip(path, events)
        clip = read_clip(path, uniform_frame_indices(FRAMES_PER_EVENT * len(events), shown_frames(events)))
        common, moments = long_clip_examples(events, rng) if long else (short_clip_examples(events, rng), [])
        vision = None
        for (prompt, reply), phase in [*((e, "mix") for e in common), *((e, "long_moment") for e in moments)]:
            enc = adapter.encode_prompt(processor, clip, prompt)
            if vision is None:  # stored in bf16 to keep the encoded set small
                vision = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in enc.vision.items()}
            rows.append({"seq": labelled_row(enc.tokens, adapter.response_ids(processor, reply)), "vision": vision,
                         "phase": "describe" if prompt == DESCRIBE else phase, "draw": rng.random()})
    return rows


def training_pool(rows: list[dict], cfg: ToyBaseConfig, step: int) -> list[dict]:
    """The rows a step draws its batch from: descriptions only for ``describe_steps``, then the mix,
    and in the last ``share_steps`` the mix with a ``long_moment_share`` of the long clips' moment
    questions."""
    if step < cfg.describe_steps:
        return [r for r in rows if r["phase"] == "describe"]
    if step < branch_step(cfg):
        return [r for r in rows if r["phase"] != "long_moment"]
    return [r for r in rows if r["phase"] != "long_moment" or r["draw"] < cfg.long_moment_share]


def branch_step(cfg: ToyBaseConfig) -> int:
    """The step from which on the share acts: every share's base shares the steps before it."""
    return cfg.steps - cfg.share_steps


def _by_frame_count(rows: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row["vision"]["pixel_values_videos"].shape), []).append(row)
    return list(groups.values())


def _batch(rows: list[dict], pad_id: int) -> dict:
    visions = [{k: v.float() if v.is_floating_point() else v for k, v in r["vision"].items()} for r in rows]
    batch = labelled_batch([r["seq"] for r in rows], visions, pad_id)
    return {**batch["inputs"], "labels": batch["labels"]}


def encode_clips(cfg: ToyBaseConfig) -> list[dict]:
    """The recipe's SFT rows (the same for every share: the share only filters them)."""
    _, processor = build_toy_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        return _encode_clips(cfg, get_adapter(FAMILY), processor, Path(tmp))


def train_toy_base(out: Path, cfg: ToyBaseConfig, checkpoints: Path | None = None, every: int = 200,
                   rows: list[dict] | None = None) -> Path:
    """Train the base into ``out``. With ``checkpoints``, the state is saved every ``every`` steps
    and training resumes from the newest checkpoint it finds there (:mod:`toy.base_checkpoints`):
    an interrupted base, or another share's base after the branch step, goes on from it. ``rows``:
    the recipe's :func:`encode_clips`, when several shares are trained in one process."""
    model, processor = build_toy_model(cfg)
    rows = encode_clips(cfg) if rows is None else rows
    pad_id = pad_token_id(processor)
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, cfg.steps // 20), cfg.steps)
    state = TrainingState(model, optimizer, schedule, gen)
    store = CheckpointStore(checkpoints, cfg, branch_step(cfg)) if checkpoints else None
    first = store.resume(state) if store else 0
    model.train()
    bar = tqdm(range(first, cfg.steps), desc="toy base: SFT", initial=first, total=cfg.steps)
    for step in bar:
        pool = training_pool(rows, cfg, step)
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
        state.log.append({"step": step + 1, "loss": round(loss, 4)})
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
        if store and ((step + 1) % every == 0 or step + 1 == branch_step(cfg)):
            store.save(state, step + 1)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    (out / "toy_base.json").write_text(json.dumps(recipe_record(cfg), indent=2))
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state.log))
    return out


def toy_base_path(cfg: ToyBaseConfig = ToyBaseConfig(), rows: list[dict] | None = None) -> Path:
    """The toy base model for ``cfg``: the committed one (``SHIPPED``) if it was trained with ``cfg``,
    else trained on first use and cached. Every share's base of one recipe branches from one common
    run, whose checkpoints are cached beside it (``rows``: see :func:`train_toy_base`)."""
    if shipped_config() == recipe_record(cfg):
        return shipped_base()
    digest = hashlib.sha256(json.dumps(recipe_record(cfg), sort_keys=True).encode()).hexdigest()[:10]
    checkpoints = cache_dir() / f"toy-base-v{TOY_VERSION}-{recipe_name(cfg)}.checkpoints"
    return build_once(cache_dir() / f"toy-base-v{TOY_VERSION}-{digest}",
                      lambda tmp: train_toy_base(tmp, cfg, checkpoints, rows=rows), "config.json")


def cached_shares(cfg: ToyBaseConfig, shares: list[float]) -> list[Path]:
    """The cached base of every share of ``cfg``'s recipe, the clips encoded once for all of them."""
    rows = encode_clips(cfg)
    return [toy_base_path(replace(cfg, long_moment_share=share), rows) for share in shares]


def recipe_name(cfg: ToyBaseConfig) -> str:
    """A short name of ``cfg`` without its share: every share's base of one recipe has it."""
    common = {k: v for k, v in recipe_record(cfg).items() if k != "long_moment_share"}
    return hashlib.sha256(json.dumps(common, sort_keys=True).encode()).hexdigest()[:10]


def recipe_record(cfg: ToyBaseConfig) -> dict:
    """``cfg`` and the version of the world and training code it was trained with (``toy_base.json``)."""
    return {**asdict(cfg), "toy_version": TOY_VERSION}


def shipped_config() -> dict | None:
    """The recipe of the committed base, or ``None`` if none is committed."""
    path = SHIPPED / "toy_base.json"
    return json.loads(path.read_text()) if path.exists() else None


def shipped_base() -> Path:
    """The committed base, its files checked against its ``SHA256SUMS``."""
    for line in (SHIPPED / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() != digest:
            raise SystemExit(f"error: {SHIPPED / name} does not match its sha256 in {SHIPPED / 'SHA256SUMS'} "
                             "(a changed or Git LFS pointer file?); retrain it: python -m toy.base --help")
    return SHIPPED


def ship(trained: Path) -> Path:
    """Copy a trained base into ``SHIPPED`` with a ``SHA256SUMS`` of its files (then commit it)."""
    SHIPPED.mkdir(exist_ok=True)
    sums = []
    for path in sorted(p for p in trained.iterdir() if p.is_file()):
        shutil.copy(path, SHIPPED / path.name)
        sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    (SHIPPED / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return SHIPPED


def main(argv: list[str] | None = None) -> int:
    """``python -m toy.base --out DIR``: train the toy base from scratch, resumably."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, help="where the trained base is saved (not with --shares)")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="checkpoint directory, resumed from if it holds checkpoints (default OUT.checkpoints)")
    parser.add_argument("--every", type=int, default=200, help="steps between checkpoints")
    parser.add_argument("--ship", action="store_true", help=f"then copy it into {SHIPPED} with its sha256 sums")
    parser.add_argument("--shares", type=float, nargs="+", default=None,
                        help="instead: build the cached base of each of these shares (what the calibration loads), "
                             "branching from the recipe's cached common checkpoint, the clips encoded once")
    for f in fields(ToyBaseConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    cfg = ToyBaseConfig(**{f.name: getattr(args, f.name) for f in fields(ToyBaseConfig)})
    torch.set_num_threads(1)  # deterministic for a machine; the other core stays free
    if args.shares:
        for path in cached_shares(cfg, args.shares):
            print(f"toy base: {path}")
        return 0
    if args.out is None:
        parser.error("--out is required (or --shares)")
    checkpoints = args.checkpoints or args.out.with_name(args.out.name + ".checkpoints")
    args.out.mkdir(parents=True, exist_ok=True)
    train_toy_base(args.out, cfg, checkpoints, args.every)
    print(f"toy base: saved to {args.out}" + (f" and shipped to {ship(args.out)}" if args.ship else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
