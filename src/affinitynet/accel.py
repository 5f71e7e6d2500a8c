"""Throughput options for the networks (``runtime`` keys): mixed precision, channels-last, data loading, syncs.

Each option is off by default or changes nothing it must not change (see tests/test_throughput_options.py):

- ``amp``: the networks run under autocast, float16 on CUDA (the training loss scaled by a
  ``GradScaler``) and bfloat16 elsewhere. Network outputs come back as float32, so losses, CAM sums,
  softmax scores, affinities, the random walk and the CRF stay in float32.
- ``channels_last``: networks and their inputs in NHWC memory format (faster convolutions on GPUs
  with tensor cores); the same values up to the convolution algorithm's rounding.
- ``pin_memory`` and ``prefetch_factor``: page-locked training batches on CUDA, copied without
  blocking; how many batches each DataLoader worker (``num_workers``) prepares ahead. Same batches.
- ``step_sync``: with ``false`` the training loop keeps losses on the device and reads them only
  every ``log_every`` steps and at the end of an epoch (no host-device synchronisation in between);
  the NaN guard then names the first bad step when it reads them. Same weights, same history.
- ``batch_images``: inference networks see up to this many images of one size at once (make_cam).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class AccelOptions:
    """The ``runtime`` section's throughput keys, as the training loop and the inference stages use them."""

    amp: bool = False
    channels_last: bool = False
    pin_memory: bool = True
    prefetch_factor: int = 2
    step_sync: bool = True
    batch_images: int = 1

    def __post_init__(self):
        for key in ("prefetch_factor", "batch_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"runtime.{key} must be at least 1, got {getattr(self, key)}")

    @classmethod
    def from_runtime(cls, runtime) -> "AccelOptions":
        """The options of a ``RuntimeConfig`` (keys it lacks keep their defaults)."""
        return cls(**{k: getattr(runtime, k) for k in cls.__dataclass_fields__ if hasattr(runtime, k)})

    def autocast_dtype(self, device) -> torch.dtype | None:
        """The autocast dtype on ``device``: float16 on CUDA, bfloat16 elsewhere; None without ``amp``."""
        if not self.amp:
            return None
        return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16

    def grad_scaler(self, device) -> torch.amp.GradScaler:
        """A loss scaler, enabled only for float16 training (bfloat16 has float32's range)."""
        device = torch.device(device)
        return torch.amp.GradScaler(device.type, enabled=self.autocast_dtype(device) == torch.float16)

    def loader_kwargs(self, device, num_workers: int) -> dict:
        """DataLoader keyword arguments: pinned memory on CUDA only, prefetching only with workers."""
        kwargs = {"num_workers": num_workers, "pin_memory": self.pin_memory and torch.device(device).type == "cuda"}
        if num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs

    def wrap(self, model: nn.Module, device) -> nn.Module:
        """``model`` itself when neither ``amp`` nor ``channels_last`` is on, else an ``Autocast`` around it."""
        dtype = self.autocast_dtype(device)
        if dtype is None and not self.channels_last:
            return model
        return Autocast(model, torch.device(device).type, dtype, self.channels_last)

    def for_inference(self, model: nn.Module, device) -> nn.Module:
        """A trained network ready for inference: channels-last weights when asked, then ``wrap``."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return self.wrap(model, device)


def _float32(out):
    """Network outputs (a tensor, or tuples/lists/dicts of them) with half-precision tensors cast to float32."""
    if torch.is_tensor(out):
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
    if isinstance(out, (tuple, list)):
        return type(out)(_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: _float32(v) for k, v in out.items()}
    return out


class Autocast(nn.Module):
    """``net``'s ``forward``, ``cam`` and ``boundary_map`` under autocast (inputs channels-last when asked), outputs in float32.

    Other attributes (``backbone``, ``param_groups``...) are the wrapped network's.
    """

    def __init__(self, net: nn.Module, device_type: str, dtype: torch.dtype | None, channels_last: bool):
        super().__init__()
        self.net = net
        self.device_type, self.dtype, self.channels_last = device_type, dtype, channels_last

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["net"], name)

    def _run(self, fn: Callable, args, kwargs):
        if self.channels_last:
            args = tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4
                         else a for a in args)
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            out = fn(*args, **kwargs)
        return _float32(out)

    def forward(self, *args, **kwargs):
        """The wrapped network's forward pass; half-precision outputs come back as float32."""
        return self._run(self.net, args, kwargs)

    def cam(self, *args, **kwargs):
        """The wrapped classifier's ``cam``; half-precision maps come back as float32."""
        return self._run(self.net.cam, args, kwargs)

    def boundary_map(self, *args, **kwargs):
        """The wrapped boundary network's ``boundary_map`` (IRN's); half-precision maps come back as float32."""
        return self._run(self.net.boundary_map, args, kwargs)


class SameSizeBatches:
    """``work(name, input)`` for ``StageContext.map_images`` that runs up to ``size`` images of one size together.

    Images arrive in this process's order (``names``, those already done left out) with their inputs;
    ``key(input)`` is an input's size. An image's group is itself and the images still waiting among the
    ``lookahead`` names after it whose size matches, in order, up to ``size``; ``run(names, inputs)``
    computes and writes a group's outputs as soon as its members are known (the group is full, a later
    image arrived, or the loop ended: ``with`` it around the loop, as ``map_images(around=...)`` does).
    At most ``lookahead`` + 1 inputs wait in memory.
    """

    def __init__(self, names: Sequence[str], run: Callable, size: int, lookahead: int | None = None,
                 key: Callable = lambda item: tuple(item[0].shape[:2])):
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        self.run, self.size, self.key = run, size, key
        self.position = {n: i for i, n in enumerate(names)}
        self.lookahead = 4 * size if lookahead is None else lookahead
        self.waiting: list[tuple[str, object]] = []  # arrived, not yet run, in arrival order

    def _group(self, ended: bool = False) -> list[int] | None:
        """Positions in ``waiting`` of the first waiting image's group once it is known (``ended``: no image is
        still to come), else None."""
        first, item = self.waiting[0]
        end = self.position[first] + self.lookahead
        shape = self.key(item)
        group = [i for i, (name, other) in enumerate(self.waiting)
                 if self.position[name] <= end and self.key(other) == shape][:self.size]
        closed = ended or self.position[self.waiting[-1][0]] > end
        return group if len(group) == self.size or closed else None

    def _run(self, group: list[int]) -> None:
        members = [self.waiting[i] for i in group]
        self.waiting = [w for i, w in enumerate(self.waiting) if i not in group]
        self.run([n for n, _ in members], [item for _, item in members])

    def __call__(self, name: str, item) -> None:
        self.waiting.append((name, item))
        while self.waiting and (group := self._group()) is not None:
            self._run(group)

    def __enter__(self) -> "SameSizeBatches":
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is None:  # the last images: every group's members have arrived
            while self.waiting:
                self._run(self._group(ended=True))
        self.waiting = []
