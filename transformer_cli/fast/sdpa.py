"""Attention through torch's fused kernel, `F.scaled_dot_product_attention`, and the policy
of when to use it.

Its plain twin is `model.attention.attend_math`, eq. 1 written out; tests/model/test_model.py
proves the two equal in outputs and gradients, with every mask kind. Where each is the
faster one, and why, is measured in docs/performance.md ("Attention paths").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

# The fused kernels the fused path may pick on CUDA: all but cuDNN's, which builds an
# execution plan for every new shape; with batch-max padding nearly every batch is one
# (docs/performance.md, "cuDNN attention"). None = torch's own choice.
CUDA_BACKENDS: list[SDPBackend] | None = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def chosen(path: str, device: torch.device) -> bool:
    """Whether attention configured as `path` (auto, sdpa, math) runs fused on `device`.

    auto: fused on CUDA; on the CPU the written-out path is the faster one at sentence
    lengths (docs/performance.md, "Attention paths").
    """
    return path == "sdpa" or (path == "auto" and device.type == "cuda")


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """softmax(Q K^T / sqrt(d_k)) V by the fused kernel: (B, H, T, K).

    On the CPU it runs in fp32 even under bf16 autocast (its bf16 kernel is the slower
    one); on CUDA it picks among `CUDA_BACKENDS`.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if q.device.type == "cuda" and CUDA_BACKENDS is not None:
        with sdpa_kernel(CUDA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
