"""One row per answer: prompt + chosen and prompt + rejected as separate rows, as TRL does it.

Training uses the shared-prefix layout (``tpo/shared_prefix.py``: one row per pair) wherever it is
exact; a model with recurrent layers is scored in this layout instead (``tpo/scoring.py`` decides).
It is also the baseline the packed layout is tested and benchmarked against, and the plain labelled
rows of supervised fine-tuning (the toy base model).

Its scoring (:func:`per_answer_logps`) applies the LM head only at the positions that predict a
response token: a long video prompt makes no vocabulary logits.
:func:`response_logps`, from every position's logits, is the naive baseline.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from tpo.data.collate import PairCollator
from tpo.data.sequences import append_tokens, pad_rows, pad_token_rows
from tpo.models import IGNORE_INDEX, ModelAdapter, PromptEncoding


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


def answer_rows(prompts: list[PromptEncoding], answers: list[list[list[int]]], pad_id: int) -> dict:
    """``N * B`` labelled rows, answer by answer: rows ``[k B, (k + 1) B)`` are the prompts each
    followed by its answer ``k``, the vision tensors repeated to match. ``answers[i]`` are prompt ``i``'s
    answers; one with fewer than the most gets empty ones (a row of its prompt alone, nothing labelled).
    ``answers`` in the result is ``N``."""
    n = max(len(a) for a in answers)
    rows = [labelled_row(p.tokens, own[k] if k < len(own) else [])
            for k in range(n) for p, own in zip(prompts, answers)]
    return {**labelled_batch(rows, [p.vision for p in prompts] * n, pad_id), "answers": n}


def two_pass_batch(prompts: list[PromptEncoding], chosen: list[list[int]], rejected: list[list[int]],
                   pad_id: int) -> dict:
    """``2B`` rows: ``[0, B)`` prompt + chosen, ``[B, 2B)`` the same prompts + rejected (:func:`answer_rows`)."""
    return answer_rows(prompts, [[c, r] for c, r in zip(chosen, rejected)], pad_id)


class TwoPassCollator(PairCollator):
    """Items of :class:`tpo.data.datamodule.PreferenceDataset` as a :func:`two_pass_batch`."""

    pack = staticmethod(two_pass_batch)


def two_pass_collate(adapter: ModelAdapter, processor, items: list[dict]) -> dict:
    """Items of :class:`tpo.data.datamodule.PreferenceDataset` as a :func:`two_pass_batch`, with their ``ids``."""
    return TwoPassCollator(adapter, processor)(items)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The log-prob of each target token in fp32: ``logits`` ``(..., V)``, ``targets`` and result ``(...)``."""
    return -F.cross_entropy(logits.float().movedim(-1, 1), targets, reduction="none")


def response_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(sum of log-probs of the response tokens, number of response tokens)`` from the logits
    of every position, as TRL computes them (the tests' and the benchmark's naive baseline; training uses
    :func:`per_answer_logps`, which makes no logits over the prompt).

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; positions labelled ``IGNORE_INDEX`` (video,
    prompt, padding) contribute nothing.
    """
    logits, labels = logits[:, :-1], labels[:, 1:].to(logits.device)
    mask = labels != IGNORE_INDEX
    return (token_logps(logits, labels.masked_fill(~mask, 0)) * mask).sum(-1), mask.sum(-1)


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, positions)`` of every position whose next token is labelled: the positions that predict
    a response token, row by row."""
    return (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)


@contextmanager
def lm_head_at(model, rows: torch.Tensor, positions: torch.Tensor):
    """While open, the model's LM head runs only on the hidden states at ``(rows, positions)``: the
    model's ``logits`` are ``(K, V)``, one per position, and no other vocabulary logits are made.

    A hook on the head rather than a call of the model's body: the model's own forward still runs, so
    an FSDP2 root (which gathers the head's weights around it) and a LoRA wrapper work unchanged."""
    def gather(head, args):
        hidden = args[0]
        return (hidden[rows.to(hidden.device), positions.to(hidden.device)], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def per_answer_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts of every answer of an :func:`answer_rows` batch, ``(B, N)``
    each as :func:`tpo.shared_prefix.answer_logps` gives them, from one forward over all rows with the
    LM head applied at the response-predicting positions only."""
    inputs = batch["inputs"]
    labels = batch["labels"].to(inputs["input_ids"].device)
    rows, positions = labelled_positions(labels)
    targets = labels[rows, positions + 1]
    with lm_head_at(model, rows, positions):
        logits = model(**inputs, use_cache=False).logits  # (K, V)
    logps = token_logps(logits, targets.to(logits.device))
    rows = rows.to(logps.device)
    sums = logps.new_zeros(len(labels)).index_add(0, rows, logps)
    counts = torch.bincount(rows, minlength=len(labels))
    n = batch["answers"]
    return sums.view(n, -1).T, counts.view(n, -1).T

