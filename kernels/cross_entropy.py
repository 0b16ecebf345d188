"""Mean cross-entropy over the rows whose target is not ignore_index, fp32.

    loss = cross_entropy(logits (N, V), targets (N,), ignore_index=-1)

On CPU (fp32 or bf16 logits, autograd on, not compiling) the forward pass also computes the
gradient, softmax - onehot, in one fused pass per row (kernels/fused_cpu.c), and the backward only
scales it: autograd through F.cross_entropy would make six more passes over the (N, V) logits
(fp32 copy, log-softmax, zero-fill, scatter, log-softmax backward, cast back). Elsewhere it is
F.cross_entropy on fp32 logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import fused_cpu


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        targets = torch.where(targets == ignore_index, -1, targets) if ignore_index != -1 else targets
        losses, grad = fused_cpu.cross_entropy_forward(logits.contiguous(), targets)
        count = (targets >= 0).sum()
        ctx.save_for_backward(grad, count)
        return losses.sum() / count  # 0 / 0 = nan when every target is ignored, as in PyTorch

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad, count = ctx.saved_tensors
        # a Python float: scaled in fp32 before the one rounding to a bf16 grad's dtype
        return grad * float(grad_loss / count), None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    if torch.is_grad_enabled() and fused_cpu.applies(logits):
        return _FusedCrossEntropy.apply(logits, targets, ignore_index)
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)
