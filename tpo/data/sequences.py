"""Token rows: a prompt with answer tokens appended, and rows padded into one batch tensor."""

from __future__ import annotations

import torch

# Per-token keys other than input_ids take this value on appended answer tokens (others: 0).
_APPENDED_VALUES = {"attention_mask": 1}


def append_tokens(prompt_tokens: dict[str, torch.Tensor], ids: list[int]) -> dict[str, torch.Tensor]:
    """``prompt_tokens`` (``input_ids`` and the other per-token keys) with ``ids`` appended."""
    new = torch.tensor(ids, dtype=prompt_tokens["input_ids"].dtype)
    row = {}
    for key, value in prompt_tokens.items():
        tail = new if key == "input_ids" else torch.full((len(ids),), _APPENDED_VALUES.get(key, 0), dtype=value.dtype)
        row[key] = torch.cat([value, tail])
    return row


def pad_rows(rows: list[torch.Tensor], value: int, left: bool = False) -> torch.Tensor:
    """``(len(rows), longest)``: the rows padded with ``value`` on the right (or the left, for ``generate``)."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        if left:
            out[i, out.shape[1] - len(row):] = row
        else:
            out[i, : len(row)] = row
    return out


def pad_token_rows(rows: list[dict[str, torch.Tensor]], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Per-token dicts stacked key by key: ``input_ids`` padded with ``pad_id``, the rest with 0."""
    return {key: pad_rows([r[key] for r in rows], pad_id if key == "input_ids" else 0, left) for key in rows[0]}
