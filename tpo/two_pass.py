"""The two-pass layout (prompt + chosen and prompt + rejected as separate rows), as TRL does it.

Training uses the shared-prefix layout (``tpo/shared_prefix.py``): one row per pair. This one is the
baseline it is tested and benchmarked against, and the plain labelled rows of supervised
fine-tuning (the toy base model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tpo.data.collate import answer_ids
from tpo.data.sequences import append_tokens, pad_rows, pad_token_rows
from tpo.loss import Pair
from tpo.models import IGNORE_INDEX, ModelAdapter, PromptEncoding, pad_token_id


def labelled_row(prompt_tokens: dict[str, torch.Tensor], response: list[int]) -> dict[str, torch.Tensor]:
    """Prompt followed by response, with ``labels`` on the response tokens only."""
    row = append_tokens(prompt_tokens, response)
    row["labels"] = torch.cat([torch.full_like(prompt_tokens["input_ids"], IGNORE_INDEX),
                               torch.tensor(response, dtype=prompt_tokens["input_ids"].dtype)])
    return row


def labelled_batch(rows: list[dict[str, torch.Tensor]], visions: list[dict[str, torch.Tensor]], pad_id: int) -> dict:
    """Labelled rows right-padded, each row's vision tensors concatenated: ``{"inputs", "labels"}``."""
    inputs = pad_token_rows([{k: v for k, v in r.items() if k != "labels"} for r in rows], pad_id)
    for key in visions[0]:
        inputs[key] = torch.cat([v[key] for v in visions])
    return {"inputs": inputs, "labels": pad_rows([r["labels"] for r in rows], IGNORE_INDEX)}


def two_pass_batch(prompts: list[PromptEncoding], chosen: list[list[int]], rejected: list[list[int]],
                   pad_id: int) -> dict:
    """``2B`` rows: ``[0, B)`` prompt + chosen, ``[B, 2B)`` the same prompts + rejected, the vision
    tensors repeated to match."""
    rows = [labelled_row(p.tokens, ids) for answers in (chosen, rejected) for p, ids in zip(prompts, answers)]
    return labelled_batch(rows, [p.vision for p in prompts] * 2, pad_id)


def two_pass_collate(adapter: ModelAdapter, processor, items: list[dict]) -> dict:
    """Items of :class:`tpo.data.datamodule.PreferenceDataset` as a :func:`two_pass_batch`, with their ``ids``."""
    prompts = [adapter.encode_prompt(processor, it["clip"], it["question"]) for it in items]
    chosen, rejected = ([answer_ids(adapter, processor, it, side) for it in items] for side in ("chosen", "rejected"))
    return {**two_pass_batch(prompts, chosen, rejected, pad_token_id(processor)), "ids": [it["id"] for it in items]}


def response_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(sum of log-probs of the response tokens, number of response tokens)``.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; positions labelled ``IGNORE_INDEX`` (video,
    prompt, padding) contribute nothing.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    token_logps = -F.cross_entropy(logits.float().transpose(1, 2), labels.masked_fill(~mask, 0), reduction="none")
    return (token_logps * mask).sum(-1), mask.sum(-1)


def two_pass_logps(model, batch: dict) -> tuple[Pair, Pair]:
    """Summed log-probs and token counts of a :func:`two_pass_batch`, as :func:`tpo.shared_prefix.shared_prefix_logps`
    gives them, from one forward over all ``2B`` rows."""
    sums, counts = response_logps(model(**batch["inputs"], use_cache=False).logits, batch["labels"])
    n = len(sums) // 2
    return Pair(sums[:n], sums[n:]), Pair(counts[:n], counts[n:])
