"""The TPO objective: DPO on (chosen, rejected) plus an SFT term on the chosen response.

    L = -log σ(β[(log πθ(r+) - log πref(r+)) - (log πθ(r-) - log πref(r-))]) + α · NLL(r+)

(paper eq. 1-3). Sequence log-probabilities are sums over response tokens only, except for IPO
(Azar et al. 2023, as TRL implements it), whose log-ratios are per-token means:

    L_IPO = (h̄ - 1/(2β))²,  h̄ = (log πθ(r+) - log πref(r+))/|r+| - (log πθ(r-) - log πref(r-))/|r-|
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

LossType = Literal["sigmoid", "ipo", "hinge"]


class Pair(NamedTuple):
    """One value per preference pair for each side: ``chosen`` and ``rejected``, ``(B,)`` each
    (summed log-probs, or token counts). ``torch.cat(pair)`` is the two-pass layout's ``(2B,)``."""

    chosen: torch.Tensor
    rejected: torch.Tensor

    def rows(self, index) -> Pair:
        """The pairs ``index`` (a mask, indices or a slice) of both sides."""
        return Pair(self.chosen[index], self.rejected[index])


def tpo_loss(policy: Pair, reference: Pair, tokens: Pair, beta: float, alpha: float, loss_type: LossType = "sigmoid",
             sft_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The loss and its metrics from the policy's and the reference's summed response log-probs and
    the responses' token counts, per pair.

    The rewards (``β ×`` log-ratio) are those the loss sees: per-token means for ``ipo``, sums otherwise.

    The SFT term is the mean negative log-likelihood per chosen-response token over the batch
    (total NLL of the chosen tokens / their number), i.e. the usual token-level cross-entropy,
    so α weighs it independently of response length. ``sft_tokens`` replaces the divisor: with
    several processes, the global token count / the number of processes, so that the average of
    the ranks' losses (what data parallelism optimises) is the loss of the whole global batch.
    """
    chosen_ratio = policy.chosen - reference.chosen
    rejected_ratio = policy.rejected - reference.rejected
    if loss_type == "ipo":
        chosen_ratio = chosen_ratio / tokens.chosen.clamp(min=1)
        rejected_ratio = rejected_ratio / tokens.rejected.clamp(min=1)
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        dpo = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        dpo = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        dpo = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose sigmoid, ipo or hinge")
    dpo = dpo.mean()
    divisor = tokens.chosen.sum() if sft_tokens is None else sft_tokens
    sft = -policy.chosen.sum() / divisor.clamp(min=1)
    chosen_rewards = (beta * chosen_ratio).detach()
    rejected_rewards = (beta * rejected_ratio).detach()
    return {
        "loss": dpo + alpha * sft,
        "loss_dpo": dpo.detach(),
        "loss_sft": sft.detach(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": policy.chosen.detach().mean(),
        "logps/rejected": policy.rejected.detach().mean(),
    }
