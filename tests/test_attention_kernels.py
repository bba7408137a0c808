"""benchmarks/attention_kernels.py without timing: which SDPA kernel each q/k/v layout gets on this torch (the
fact behind the channels-last advice of docs/PERFORMANCE.md), and that the contiguous variant computes the same
attention."""
from __future__ import annotations

import torch

from benchmarks import attention_kernels


def test_strided_views_take_the_math_path_and_contiguous_or_channels_last_the_fused_kernel():
    k = attention_kernels.kernels(B=1, C=32, side=8)
    assert k["views (contiguous memory)"] == "aten::_scaled_dot_product_attention_math"
    assert k["views made contiguous"] == k["views (channels-last memory)"] == \
        "aten::_scaled_dot_product_flash_attention_for_cpu"


def test_the_contiguous_variant_is_the_same_attention():
    q, k, v = (torch.randn(2, 1, 16, 64).transpose(-1, -2) for _ in range(3))
    torch.testing.assert_close(attention_kernels.contiguous_sdpa(q, k, v, scale=0.2),
                               attention_kernels._sdpa(q, k, v, scale=0.2), rtol=1e-5, atol=1e-6)
