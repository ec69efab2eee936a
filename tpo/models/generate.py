"""Batched answer generation for any family: the data pipeline and the evaluator use this."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tpo.data.frames import Clip
from tpo.data.sequences import pad_token_rows
from tpo.models.adapter import ModelAdapter, PromptEncoding, end_of_turn_ids, pad_token_id
from tpo.sharding import root_unsharded


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def for_inference(model, device: str = "auto"):
    """``model`` on ``device`` (``auto``: a GPU when there is one) in eval mode, as every stage that
    answers or scores runs it."""
    return model.to(resolve_device(device)).eval()


def left_padded_batch(prompts: list[PromptEncoding], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack prompt encodings for ``generate``: tokens left-padded, vision tensors concatenated.

    Vision tensors concatenate only when the prompts have equally many frames (LLaVA families);
    group the prompts by frame count before calling this.
    """
    batch = pad_token_rows([p.tokens for p in prompts], pad_id, left=True)
    for key in prompts[0].vision:
        batch[key] = torch.cat([p.vision[key] for p in prompts])
    return batch


def stop_token_ids(model, processor) -> list[int]:
    """The model's own end tokens plus the chat template's end-of-turn token, which training appends to
    every response (:func:`tpo.models.adapter.end_of_turn_ids`); without it a model whose generation
    config names no end token never stops."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return list(dict.fromkeys(ids + end_of_turn_ids(processor)))


@dataclass(frozen=True)
class Generation:
    text: str
    truncated: bool  # stopped by ``max_new_tokens``, not by an end token: an unfinished answer


@torch.no_grad()  # not inference_mode: a sharded model that first runs under it cannot train after (FSDP2)
def generate_texts(model, processor, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                   temperature: float = 0.0, seed: int | None = None) -> list[Generation]:
    """Greedy (``temperature == 0``) or sampled continuations of a left-padded batch, decoded
    (``processor``: the model's processor, or its tokenizer)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    if seed is not None:
        torch.manual_seed(seed)
    stops = stop_token_ids(model, processor)
    with root_unsharded(model):
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id(tokenizer),
                             eos_token_id=stops, **sampling)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    # A row that never emitted an end token ran until max_new_tokens (rows that stopped are padded
    # after their end token, so it is there).
    stopped = torch.isin(new_tokens, torch.tensor(stops, device=new_tokens.device)).any(dim=1).tolist()
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [Generation(text.strip(), not done) for text, done in zip(texts, stopped)]


def answer_questions(adapter: ModelAdapter, model, processor, clips: list[Clip], questions: list[str],
                     max_new_tokens: int, temperature: float = 0.0, seed: int | None = None) -> list[Generation]:
    """The model's answers to ``questions[i]`` about ``clips[i]``, one batch."""
    prompts = [adapter.encode_prompt(processor, clip, q) for clip, q in zip(clips, questions)]
    return generate_texts(model, processor, left_padded_batch(prompts, pad_token_id(processor)), max_new_tokens,
                          temperature, seed)
