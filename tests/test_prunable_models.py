"""docs/PRUNABLE_MODELS.md: its U-Net snippet prunes cleanly; the two fused-qkv patterns fail loudly.

The snippet is read from the doc itself (between the prunable-snippet markers), so the doc cannot drift.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning import prune

DOC = Path(__file__).resolve().parents[1] / "docs" / "PRUNABLE_MODELS.md"


def _snippet_namespace() -> dict:
    text = DOC.read_text()
    code = re.search(r"<!-- prunable-snippet:start -->\n```python\n(.*?)```\n<!-- prunable-snippet:end -->",
                     text, re.S).group(1)
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 (the repository's own documentation)
    return ns


def test_doc_snippet_prunes_cleanly():
    model = _snippet_namespace()["TinyUNet"]().eval()
    example = (torch.randn(2, 3, 16, 16), torch.tensor([1.0, 500.0]))
    before = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no protected-group warning for a clean model
        pruned, report = prune(model, example, method="magnitude", ratio=0.3)
    assert sum(p.numel() for p in pruned.parameters()) < 0.7 * before
    assert pruned(*example).shape == (2, 3, 16, 16)
    assert pruned.mid.q.weight.shape[0] < 32 and pruned.mid.q.weight.shape[0] % pruned.mid.heads == 0
    protected = {g.protected for g in report.groups if g.protected}
    assert protected == {"network input", "network output", "no prunable producer (input of temb.0)"}


class _Fused(nn.Module):
    def __init__(self, stale: bool):
        super().__init__()
        self.heads, self.stale = 2, stale
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.norm = nn.GroupNorm(4, 32)
        self.qkv = nn.Conv2d(32, 96, 1)
        self.proj = nn.Conv2d(32, 32, 1)
        self.out = nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        B, C, H, W = h.shape
        d = C // self.heads if self.stale else -1
        q, k, v = self.qkv(self.norm(h)).reshape(B, 3, self.heads, d, H * W).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, -1, H, W)
        return self.out(h + self.proj(a))


def test_stale_fused_qkv_reshape_is_named_not_heads():
    model = _Fused(stale=True).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as err:
            prune(model, (torch.randn(2, 3, 8, 8),), method="magnitude", ratio=0.3)
    msg = str(err.value)
    assert "reshape/view to [2, 3, 2, 12, 64]" in msg and "test_prunable_models.py" in msg and "C // heads" in msg
    assert "heads=2" not in msg and "\n" not in msg
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # the caller's model unchanged


def test_fused_qkv_with_minus_one_warns_per_protected_group():
    model = _Fused(stale=False).eval()
    with pytest.warns(UserWarning) as record:
        pruned, _ = prune(model, (torch.randn(2, 3, 8, 8),), method="magnitude", ratio=0.3)
    lines = [str(w.message) for w in record if "is not pruned" in str(w.message)]
    assert lines == ["group qkv (C=32) is not pruned: unbind into parts of sizes fixed in the code at <model>"]
    assert pruned.qkv.weight.shape[0] == 96  # attention left unpruned, as the warning says


def test_the_ddpm_unet_prunes_without_warnings():
    import models
    model = models.load("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(model, model.example_inputs(), method="magnitude", ratio=0.2)
