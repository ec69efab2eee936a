"""The cheap gate of issue 31: can a small language model learn a moment skill fast?

The language model of the toy base alone (Qwen2, 192 wide, 4 layers), shown a *symbolic* clip:
each sampled frame is ``TOKENS_PER_FRAME`` clean tokens (colour, shape, two position-noise tokens),
so only the lookup itself is learnt, not reading pixels. It is trained on short clips (2 to
``--max-short`` objects) with "What appears right after / right before X?" questions (options in
the prompt, the clip's other objects first among the distractors), and read, by summed
log-likelihood of each option's two answer tokens, on held-out

- *window* clips: the ``WINDOW`` objects around the moment, at the long clip's density;
- *long* clips: every object of the layout once (never trained on).

Layouts:

- ``spans``: the earlier world, 8 objects (colour; the shape follows it), 4 frames each;
- ``frames``: the issue's candidate, 32 objects (8 colours x 4 shapes), one frame each, so "right
  after X" is the next frame;
- ``pairs``: frame k shows objects k and k + 1 together, as one position (their embeddings summed,
  as one pooled visual token holds both); ``pairs2``: the same as two positions;
- ``handover``: the world ``toy.world`` now draws: ``spans``, with the next object entering in an
  object's last frame (one position holding both); ``handover4``: the same with each frame as 4
  positions (colour, shape and two position-noise tokens, as ``spans`` and the real base's 2x2
  visual tokens per frame).

    python benchmarks/toy_moment_gate.py --layout handover --max-short 4 --minutes 13

The gate (issue 31): about 95 % window accuracy within ~15 min on one core, before any hour-long
base run. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, get_cosine_schedule_with_warmup

COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
SHAPES = ("square", "circle", "triangle", "cross")
WINDOW = 4
WORDS = ["<pad>", "<bos>", "<eos>", "<frames>", "<q>", "after", "before", "<options>", "<answer>",
         *COLOURS, *SHAPES, "x0", "x1", "x2", "y0", "y1", "y2", *(f"L{c}" for c in COLOURS), *(f"R{c}" for c in COLOURS)]
ID = {w: i for i, w in enumerate(WORDS)}
LAYOUTS = {"spans": dict(objects=8, frames_per_object=4), "frames": dict(objects=32, frames_per_object=1),
           "pairs": dict(objects=8, frames_per_object=1), "pairs2": dict(objects=8, frames_per_object=1),
           "handover": dict(objects=8, frames_per_object=4), "handover4": dict(objects=8, frames_per_object=4)}
PAIR_FRAME = -1  # a "pairs" frame: one position whose embedding is its two objects' (left, right) summed


def objects(layout: str) -> list[tuple[str, str]]:
    if layout != "frames":
        return [(c, SHAPES[k % 2]) for k, c in enumerate(COLOURS)]
    return [(c, s) for c in COLOURS for s in SHAPES]


def frame_tokens(obj: tuple[str, str], frames: int, rng: random.Random) -> list[int]:
    out = []
    for _ in range(frames):
        out += [ID[obj[0]], ID[obj[1]], ID[f"x{rng.randrange(3)}"], ID[f"y{rng.randrange(3)}"]]
    return out


def question(clip: list, pool: list, rng: random.Random) -> tuple[list[int], list[list[int]], int]:
    """(prompt ids, option answers, index of the right one) for a random after/before question."""
    after = rng.random() < 0.5
    i = rng.randrange(len(clip) - 1) if after else rng.randrange(1, len(clip))
    named, answer = clip[i], clip[i + 1] if after else clip[i - 1]
    others = [o for o in clip if o not in (named, answer)]
    rng.shuffle(others)
    rest = [o for o in pool if o not in clip]
    rng.shuffle(rest)
    options = [answer] + (others + rest)[:3]
    rng.shuffle(options)
    prompt = [ID["<q>"], ID["after" if after else "before"], ID[named[0]], ID[named[1]], ID["<options>"]]
    for o in options:
        prompt += [ID[o[0]], ID[o[1]]]
    return prompt + [ID["<answer>"]], [[ID[o[0]], ID[o[1]]] for o in options], options.index(answer)


def video_tokens(clip: list, layout: str, rng: random.Random) -> list[tuple[int, ...]]:
    """The clip's frames as positions, each a tuple of token ids whose embeddings are summed."""
    if layout == "handover":  # an object's 4 frames, the next one entering in its last (toy.world)
        return [(ID[f"L{a[0]}"],) * 1 if f < 3 or b is None else (ID[f"L{a[0]}"], ID[f"R{b[0]}"])
                for a, b in zip(clip, [*clip[1:], None]) for f in range(4)]
    if layout == "handover4":  # the same, each frame as 4 positions (colour, shape, 2 position noise), as in spans
        frames = []
        for a, b in zip(clip, [*clip[1:], None]):
            for f in range(4):
                colour = (ID[f"L{a[0]}"],) if f < 3 or b is None else (ID[f"L{a[0]}"], ID[f"R{b[0]}"])
                frames += [colour, (ID[a[1]],), (ID[f"x{rng.randrange(3)}"],), (ID[f"y{rng.randrange(3)}"],)]
        return frames
    if layout.startswith("pairs"):  # frame k shows object k on the left and object k + 1 on the right
        frames = [(ID[f"L{a[0]}"], ID[f"R{b[0]}"]) for a, b in zip(clip, clip[1:])]
        return frames if layout == "pairs" else [(t,) for f in frames for t in f]
    return [(t,) for obj in clip for t in frame_tokens(obj, LAYOUTS[layout]["frames_per_object"], rng)]


def example(clip: list, pool: list, layout: str, rng: random.Random):
    video = [(ID["<bos>"],), (ID["<frames>"],)] + video_tokens(clip, layout, rng)
    prompt, options, right = question(clip, pool, rng)
    if layout.startswith("pairs"):  # one object per colour: the colour names it
        prompt = [t for t in prompt if WORDS[t] not in SHAPES]
        options = [o[:1] for o in options]
    return video + [(t,) for t in prompt], options, right


def embed(model, rows: list[list[tuple[int, ...]]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    parts = max(len(t) for r in rows for t in r)
    ids = torch.full((len(rows), width, parts), ID["<pad>"])
    used = torch.zeros((len(rows), width, parts))
    for k, row in enumerate(rows):
        for j, tokens in enumerate(row):
            ids[k, j, :len(tokens)] = torch.tensor(tokens)
            used[k, j, :len(tokens)] = 1
    return (model.get_input_embeddings()(ids) * used[..., None]).sum(2)


def train_batch(model, pool: list, layout: str, max_short: int, size: int, rng: random.Random):
    rows, starts = [], []
    for _ in range(size):
        clip = rng.sample(pool, rng.randint(3 if layout in ("pairs", "pairs2") else 2, max_short))
        prompt, options, right = example(clip, pool, layout, rng)
        rows.append(prompt + [(t,) for t in options[right]] + [(ID["<eos>"],)])
        starts.append(len(prompt))
    embeds = embed(model, rows)
    mask = torch.zeros(embeds.shape[:2], dtype=torch.long)
    labels = torch.full(embeds.shape[:2], -100)
    for k, (row, start) in enumerate(zip(rows, starts)):
        mask[k, :len(row)] = 1
        labels[k, start:len(row)] = torch.tensor([t[0] for t in row[start:]])
    return embeds, mask, labels


def held_out(pool: list, layout: str, kind: str, count: int, seed: int) -> list:
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        long = rng.sample(pool, len(pool))
        if kind == "long":
            items.append(example(long, pool, layout, rng))
            continue
        start = rng.randrange(len(long) - WINDOW + 1)
        items.append(example(long[start:start + WINDOW], pool, layout, rng))
    return items


@torch.no_grad()
def accuracy(model, items: list) -> float:
    model.eval()
    right = 0
    for prompt, options, answer in items:
        embeds = embed(model, [prompt + [(t,) for t in o] for o in options])
        logp = model(inputs_embeds=embeds).logits[:, len(prompt) - 1:-1].log_softmax(-1)
        scores = logp.gather(-1, torch.tensor(options)[:, :, None]).sum((1, 2))
        right += int(scores.argmax()) == answer
    model.train()
    return 100 * right / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=LAYOUTS, default="frames")
    parser.add_argument("--max-short", type=int, default=8, help="objects of the largest training clip")
    parser.add_argument("--minutes", type=float, default=14.0, help="training time box")
    parser.add_argument("--steps", type=int, default=3000, help="schedule length (the time box may end it first)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    pool = objects(args.layout)
    config = Qwen2Config(vocab_size=len(WORDS), hidden_size=192, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512,
                         pad_token_id=ID["<pad>"], bos_token_id=ID["<bos>"], eos_token_id=ID["<eos>"])
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, args.steps // 20, args.steps)
    window = held_out(pool, args.layout, "window", 400, 1000 + args.seed)
    long = held_out(pool, args.layout, "long", 400, 2000)
    start, step, readouts = time.time(), 0, []
    while step < args.steps and time.time() - start < 60 * args.minutes:
        embeds, mask, labels = train_batch(model, pool, args.layout, args.max_short, args.batch, rng)
        loss = model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 200 == 0:
            readouts.append({"step": step, "minutes": round((time.time() - start) / 60, 1), "loss": round(loss.item(), 3),
                             "window": accuracy(model, window[:200]), "long": accuracy(model, long[:200])})
            print(json.dumps(readouts[-1]), flush=True)
    result = {"layout": args.layout, "max_short": args.max_short, "seed": args.seed, "steps": step,
              "minutes": round((time.time() - start) / 60, 1), "window": accuracy(model, window),
              "long": accuracy(model, long)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
