"""common/ema.py: the warm-up decay of the latent-diffusion codebase, and an exact split-and-resume."""
import pytest
import torch
from torch import nn

from common.ema import EMA


def scalar_model(value: float) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_warmup_decay_sequence():
    """mu_n = min(mu, (1 + n) / (10 + n)) with n = 1 at the first update: 2/11, 3/12, ... then mu."""
    ema = EMA(scalar_model(0.0), 0.5)
    seen = []
    for _ in range(12):
        seen.append(ema.current_decay())
        ema.update(scalar_model(0.0))
    assert seen[:3] == pytest.approx([2 / 11, 3 / 12, 4 / 13])
    assert seen[-1] == 0.5  # (1 + 12) / 22 > 0.5: the warm-up is over
    assert ema.num_updates == 12
    assert EMA(scalar_model(0.0), 0.5, warmup=False).current_decay() == 0.5


def test_shadow_matches_closed_form():
    """With theta fixed at 1 and the shadow starting at 0, shadow_n = 1 - prod_k mu_k (both modes)."""
    for warmup in (True, False):
        ema = EMA(scalar_model(0.0), 0.99, warmup=warmup)
        prod = 1.0
        for _ in range(50):
            prod *= ema.current_decay()
            ema.update(scalar_model(1.0))
        assert ema.model.weight.item() == pytest.approx(1 - prod, rel=1e-6)
    # the warm-up forgets the start: 50 updates keep 10! 51! / 60! of it, without it 0.99^50 = 61%
    assert prod == pytest.approx(0.99 ** 50)


def test_resume_with_num_updates_is_exact():
    torch.manual_seed(0)
    thetas = [scalar_model(float(v)) for v in torch.randn(20)]
    full = EMA(scalar_model(0.3), 0.9)
    for m in thetas:
        full.update(m)
    first = EMA(scalar_model(0.3), 0.9)
    for m in thetas[:7]:
        first.update(m)
    second = EMA(scalar_model(0.3), 0.9)
    second.load_state_dict(first.state_dict(), num_updates=7)
    for m in thetas[7:]:
        second.update(m)
    assert torch.equal(second.model.weight, full.model.weight)
    with pytest.raises(ValueError, match="num_updates"):
        second.load_state_dict(first.state_dict(), num_updates=-1)
