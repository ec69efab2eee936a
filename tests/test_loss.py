import math

import pytest
import torch

from tpo.loss import Pair, tpo_loss
from tpo.two_pass import response_logps
from tpo.models import IGNORE_INDEX


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_loss_and_metrics_match_hand_computation():
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
    rc, rr = torch.tensor([-11.0, -19.0]), torch.tensor([-11.0, -16.0])
    tokens = torch.tensor([4, 6])
    out = tpo_loss(Pair(pc, pr), Pair(rc, rr), Pair(tokens, torch.tensor([3, 9])), beta=0.2, alpha=0.5)
    # pair 1: chosen ratio 1, rejected ratio -1 -> h = 2;  pair 2: chosen -1, rejected 1 -> h = -2
    dpo = (-math.log(_sigmoid(0.2 * 2)) - math.log(_sigmoid(0.2 * -2))) / 2
    sft = 30.0 / 10  # total chosen NLL / total chosen tokens
    assert out["loss_dpo"].item() == pytest.approx(dpo, rel=1e-6)
    assert out["loss_sft"].item() == pytest.approx(sft)
    assert out["loss"].item() == pytest.approx(dpo + 0.5 * sft, rel=1e-6)
    assert out["rewards/chosen"].item() == pytest.approx((0.2 * 1 + 0.2 * -1) / 2)
    assert out["rewards/rejected"].item() == pytest.approx((0.2 * -1 + 0.2 * 1) / 2)
    assert out["rewards/margin"].item() == pytest.approx((0.4 + -0.4) / 2)
    assert out["rewards/accuracy"].item() == pytest.approx(0.5)
    assert out["logps/chosen"].item() == pytest.approx(-15.0)
    assert out["logps/rejected"].item() == pytest.approx(-13.5)


def test_ipo_and_hinge():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))  # h = 2
    tokens = torch.tensor([1])
    hinge = tpo_loss(Pair(pc, pr), Pair(rc, rr), Pair(tokens, tokens), beta=0.25, alpha=0.0,
                     loss_type="hinge")["loss"].item()
    assert hinge == pytest.approx(max(0.0, 1 - 0.25 * 2))
    with pytest.raises(ValueError, match="unknown loss_type"):
        tpo_loss(Pair(pc, pr), Pair(rc, rr), Pair(tokens, tokens), beta=0.1, alpha=0.0, loss_type="kto")


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    same, tokens = torch.tensor([-5.0]), torch.tensor([3])
    loss = tpo_loss(Pair(pc, pr), Pair(same, same), Pair(tokens, tokens), beta=0.1, alpha=0.0)["loss"]
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()


def test_response_logps_sum_response_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4, 7, IGNORE_INDEX],
                           [IGNORE_INDEX, IGNORE_INDEX, 2, 3, 5, 9]])
    logps, counts = response_logps(logits, labels)
    lp = logits.log_softmax(-1)
    expected0 = lp[0, 2, 4] + lp[0, 3, 7]
    expected1 = lp[1, 1, 2] + lp[1, 2, 3] + lp[1, 3, 5] + lp[1, 4, 9]
    assert torch.allclose(logps, torch.stack([expected0, expected1]))
    assert counts.tolist() == [2, 4]
    # Logits at positions that predict prompt tokens do not matter.
    changed = logits.clone()
    changed[0, :2] = torch.randn(2, 11) * 10
    assert torch.equal(response_logps(changed, labels)[0][0], logps[0])


def test_ipo_uses_per_token_log_ratios():
    """IPO as defined (Azar et al.; TRL): log-ratios averaged over each answer's own tokens."""
    pc, pr = torch.tensor([-10.0, -6.0]), torch.tensor([-30.0, -4.0])
    rc, rr = torch.tensor([-14.0, -5.0]), torch.tensor([-24.0, -8.0])
    chosen_tokens, rejected_tokens = torch.tensor([4, 2]), torch.tensor([12, 1])
    beta = 0.5
    out = tpo_loss(Pair(pc, pr), Pair(rc, rr), Pair(chosen_tokens, rejected_tokens), beta=beta, alpha=0.0,
                   loss_type="ipo")
    # pair 1: chosen (-10 + 14) / 4 = 1, rejected (-30 + 24) / 12 = -0.5 -> h = 1.5
    # pair 2: chosen (-6 + 5) / 2 = -0.5, rejected (-4 + 8) / 1 = 4 -> h = -4.5
    expected = ((1.5 - 1 / (2 * beta)) ** 2 + (-4.5 - 1 / (2 * beta)) ** 2) / 2
    assert out["loss"].item() == pytest.approx(expected)
    assert out["rewards/chosen"].item() == pytest.approx(beta * (1 - 0.5) / 2)
    assert out["rewards/rejected"].item() == pytest.approx(beta * (-0.5 + 4) / 2)
    # summed log-ratios (h = 4 - (-6) = 10 for pair 1) would give a different loss
    summed = ((10 - 1) ** 2 + (-1 - 4 - 1) ** 2) / 2
    assert out["loss"].item() != pytest.approx(summed)
    # the rejected answers' lengths reach the loss: a longer rejected answer changes it
    longer = tpo_loss(Pair(pc, pr), Pair(rc, rr), Pair(chosen_tokens, rejected_tokens * 2), beta=beta, alpha=0.0,
                      loss_type="ipo")
    assert longer["loss"].item() != pytest.approx(expected)
