"""Batched answer generation for any family: the data pipeline and the evaluator use this."""

from __future__ import annotations

import numpy as np
import torch

from tpo.models.adapter import ModelAdapter, PromptEncoding, pad_token_id
from tpo.sharding import root_unsharded


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def left_padded_batch(prompts: list[PromptEncoding], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack prompt encodings for ``generate``: tokens left-padded, vision tensors concatenated.

    Vision tensors concatenate only when the prompts have equally many frames (LLaVA families);
    group the prompts by frame count before calling this.
    """
    length = max(len(p.tokens["input_ids"]) for p in prompts)
    batch = {}
    for key in prompts[0].tokens:
        fill = pad_id if key == "input_ids" else 0
        rows = [torch.cat([torch.full((length - len(p.tokens[key]),), fill, dtype=p.tokens[key].dtype), p.tokens[key]])
                for p in prompts]
        batch[key] = torch.stack(rows)
    for key in prompts[0].vision:
        batch[key] = torch.cat([p.vision[key] for p in prompts])
    return batch


def stop_token_ids(model, tokenizer) -> list[int]:
    """The model's own end tokens plus the tokenizer's end-of-turn token, which training appends to
    every response; without it a model whose generation config names no end token never stops."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return list(dict.fromkeys(ids + [tokenizer.eos_token_id]))


@torch.inference_mode()
def generate_texts(model, tokenizer, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                   temperature: float = 0.0, seed: int | None = None) -> list[str]:
    """Greedy (``temperature == 0``) or sampled continuations of a left-padded batch, decoded."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    if seed is not None:
        torch.manual_seed(seed)
    with root_unsharded(model):
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id(tokenizer),
                             eos_token_id=stop_token_ids(model, tokenizer), **sampling)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_questions(adapter: ModelAdapter, model, processor, videos: list[np.ndarray], questions: list[str],
                     max_new_tokens: int, temperature: float = 0.0, seed: int | None = None) -> list[str]:
    """The model's answers to ``questions[i]`` about ``videos[i]`` (frames ``(T, H, W, 3)``), one batch."""
    tokenizer = getattr(processor, "tokenizer", processor)
    prompts = [adapter.encode_prompt(processor, frames, q) for frames, q in zip(videos, questions)]
    return generate_texts(model, tokenizer, left_padded_batch(prompts, pad_token_id(tokenizer)), max_new_tokens,
                          temperature, seed)
