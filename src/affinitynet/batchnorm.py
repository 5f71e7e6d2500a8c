"""BatchNorm statistics over every process's share of the batch, so N processes normalise as one process does.

On CUDA, torch's ``SyncBatchNorm``; on the CPU (gloo), where torch's refuses to run, ``GlooBatchNorm``: the
same statistics gathered with differentiable all-reduces. Frozen (eval-mode) BatchNorm layers, as the ResNet
backbones keep them, are left as they are: they never look at the batch.
"""
from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn

from .dist import is_initialized


class _SumOverProcesses(torch.autograd.Function):
    """The element-wise sum of a tensor over the process group; its gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out


def sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (sum) of ``x`` over the process group: any shape -> the same shape."""
    return _SumOverProcesses.apply(x)


class GlooBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch split over the process group.

    Mean and biased variance come from all-reduced per-channel sums (two passes: the mean first, then the
    centred squares), the running statistics from the unbiased variance of all processes' samples, and the
    gradient flows back through the all-reduces to every process's share. Outside training or a process
    group of several processes it is a plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a (B, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) -> (B, C, ...) normalised with the statistics of every process's batch."""
        if not (self.training and is_initialized() and torch_dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dtype, x = x.dtype, x.float()  # statistics in float32, also under autocast
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        local = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        totals = sum_over_processes(torch.cat([x.sum(dims), local]))
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centred = x - mean.reshape(shape)
        var = sum_over_processes((centred * centred).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return y.to(dtype)


def _gloo_copy(bn: nn.modules.batchnorm._BatchNorm) -> GlooBatchNorm:
    """A GlooBatchNorm holding ``bn``'s parameter and buffer objects (an optimiser over them keeps working)."""
    out = GlooBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        out.weight, out.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        out.running_mean, out.running_var, out.num_batches_tracked = (bn.running_mean, bn.running_var,
                                                                     bn.num_batches_tracked)
    out.train(bn.training)
    return out


def synchronise_trained_batchnorm(module: nn.Module, device: torch.device) -> None:
    """Replace, in place, every BatchNorm layer of ``module`` that is in training mode by one whose statistics
    span the process group: SyncBatchNorm on CUDA, GlooBatchNorm elsewhere. Call it in training mode."""
    for name, child in module.named_children():
        if isinstance(child, (nn.SyncBatchNorm, GlooBatchNorm)):
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.training:
            new = nn.SyncBatchNorm.convert_sync_batchnorm(child) if device.type == "cuda" else _gloo_copy(child)
            setattr(module, name, new)
        else:
            synchronise_trained_batchnorm(child, device)
