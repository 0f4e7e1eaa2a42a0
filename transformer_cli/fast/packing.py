"""Linear layers with their weights packed once, for decoding on the CPU.

A decoding step multiplies a few rows (a batch of sentences at one position each, or a
single sentence) by every weight matrix of the decoder. `F.linear` hands the BLAS the
weight as it is stored, at every call. oneDNN, the CPU kernel library inside torch, can
instead lay a weight out once in the blocked order its matrix kernel reads
(`torch.ops.mkldnn._reorder_linear_weight`) and multiply by that copy
(`torch.ops.mkldnn._linear_pointwise`); torch.compile's CPU backend does the same for the
frozen weights of a model in inference. Whole decoding gains at least as much with every
layer packed as with the output projection alone, so every layer is packed
(docs/performance.md, "Weights packed once").

`pack_linears(model, device, precision)` swaps every `nn.Linear` for a `PackedLinear`:
the same module, the same `weight` and `bias` parameters (so `state_dict`, tied weights
and training are untouched), plus the packed copy. The packed copy is used only when it
can give the same answer, up to the order of floating-point sums:

- autograd is off (`torch.no_grad` / `torch.inference_mode`): training and anything else
  that needs gradients takes `F.linear` on the parameters;
- the weight has not changed since it was packed (its version counter says so); a
  changed weight is packed again at the next call.

Its plain twin is `F.linear` on the parameters: tests/fast/test_packing.py proves them equal.
The gains are measured by `bench/decode_speed.py` and, per layer, `bench/linear_packing.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_cli.core.config import ResolvedPrecision
from transformer_cli.core.runtime import matmul_dtype


def _ops():
    """oneDNN's packing and product ops, or (None, None) where this torch build lacks them."""
    try:
        ops = torch.ops.mkldnn
        return ops._reorder_linear_weight, ops._linear_pointwise
    except (AttributeError, RuntimeError):
        return None, None


_reorder, _product = _ops()


def packing_available(device: torch.device | str, precision: ResolvedPrecision = "fp32") -> bool:
    """Whether `pack_linears` packs anything: on the CPU, with oneDNN, and for bf16 only
    where oneDNN runs bf16 products on this CPU (AVX-512 and up; autocast's `F.linear`
    runs them anywhere)."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if _product is None:
        return False
    if precision == "bf16":
        supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return supported is not None and bool(supported())
    return True


class PackedLinear(nn.Linear):
    """An `nn.Linear` that also keeps its weight packed for oneDNN; see the module docstring.

    `PackedLinear(linear, dtype)` shares `linear`'s parameters (no new weights are made).
    The packed copy is in `dtype` (fp32 or bf16), and inputs are cast to it.
    With `activation = "relu"` the layer computes relu(x W^T + b), in the packed product
    itself (oneDNN applies it as the product's results are written).
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        nn.Module.__init__(self)  # not nn.Linear's, which would make new weights
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameter objects
        self.packed_dtype = dtype
        self.activation = "none"
        self._pack()

    def _pack(self) -> None:
        with torch.no_grad():
            weight = self.weight.detach().to(self.packed_dtype)
            self.packed_weight = _reorder(weight, None)  # opaque: (out, in), blocked
            self.packed_bias = None if self.bias is None else self.bias.detach().to(weight.dtype)
        self.packed_versions = self._versions()

    def _versions(self) -> tuple[int, int]:
        return self.weight._version, -1 if self.bias is None else self.bias._version

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or not x.is_cpu:
            y = F.linear(x, self.weight, self.bias)
            return y.relu() if self.activation == "relu" else y
        if self._versions() != self.packed_versions:
            self._pack()  # the weight changed after packing
        if x.dtype != self.packed_dtype:
            x = x.to(self.packed_dtype)
        return _product(x, self.packed_weight, self.packed_bias, self.activation, [], "")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, packed={self.packed_dtype}, activation={self.activation}"


def pack_linears(model: nn.Module, device: torch.device | str, precision: ResolvedPrecision) -> int:
    """Swap every `nn.Linear` of `model` for a `PackedLinear`, for decoding on the CPU.

    The packed copies are in the precision's matmul type (fp32, or bf16 for
    `--precision bf16`, which then no longer relies on autocast for these products). A
    ReLU that follows a linear layer in an `nn.Sequential` (the feed-forward layers) moves
    into the product, and an `nn.Identity` takes its place.
    Nothing changes on other devices, or where torch lacks oneDNN: the model then decodes
    with `F.linear` as trained. Returns the number of layers packed (0 on a second call).
    """
    if not packing_available(device, precision):
        return 0
    dtype = matmul_dtype(precision)
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child, dtype))
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            layer = seq[i]
            if isinstance(layer, PackedLinear) and type(seq[i + 1]) is nn.ReLU:
                layer.activation = "relu"
                seq[i + 1] = nn.Identity()
    return len(swaps)


def fully_packed(model: nn.Module) -> bool:
    """Whether every linear layer of `model` is a `PackedLinear` (and it has some)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return bool(linears) and all(isinstance(m, PackedLinear) for m in linears)
