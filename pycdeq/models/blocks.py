"""Building blocks of the paper's multiscale models (DeepEquilibriumNetworks.jl v0.2.6).

Every block follows ``docs/architectures.md`` §4 layer by layer, so that the parameter
counts of the paper are reproduced exactly. Conventions (§3):

* ``conv(a, b, k, stride)``: ``Conv2d`` with padding ``k // 2``, **no bias** unless asked,
  weight ``N(0, 0.01^2)`` (the experiment helpers' init); ``weight_norm=True`` wraps it in
  ``torch.nn.utils.parametrizations.weight_norm(dim=0)``, adding ``g`` (one scalar per
  output channel, initialised to ``||v||`` so the effective weight starts equal to ``v``).
* ``batch_norm(c)``: BatchNorm **without running statistics**: it always normalises with
  the current batch's statistics, in training and in evaluation. Used everywhere except the
  head bottlenecks. Inside ``f`` this couples the samples of a batch (see
  :mod:`pycdeq.models.mdeq`).
* ``tracked_batch_norm(c)``: ordinary BatchNorm with running statistics (head bottlenecks only).

The v0.2.6 quirks are reproduced on purpose (docs/architectures.md §11): the residual of
:class:`ResidualBlock` is the conv2 output ``h`` (not the block input) and its last norm
comes after the ReLU; upsampling is a 3x3 conv + BN + ReLU before nearest upsampling;
every stride-2 downsampling step ends with a ReLU, the last one included.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from .. import _checks


def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
         bias: bool = False, weight_norm: bool = False) -> nn.Module:
    """``Conv2d`` with the paper's init (weight ``N(0, 0.01^2)``, zero bias), optionally weight-normalised."""
    layer = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, bias=bias)
    nn.init.normal_(layer.weight, mean=0.0, std=0.01)
    if layer.bias is not None:  # bias=True
        nn.init.zeros_(layer.bias)
    # weight_norm computes g = ||v|| from the weight as it is now, so init must come first.
    return _weight_norm(layer, dim=0) if weight_norm else layer


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm that always uses the batch's statistics (no running mean/var buffers)."""
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1, affine=True, track_running_stats=False)


def tracked_batch_norm(channels: int) -> nn.BatchNorm2d:
    """Standard BatchNorm with running statistics (only inside the head bottlenecks)."""
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True)


def conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
                   bias: bool = False) -> nn.Sequential:
    """``ReLU(BN(conv(x)))`` with a batch-statistics BN (the reference's ``conv_norm_act``)."""
    return nn.Sequential(conv(in_channels, out_channels, kernel_size, stride, bias=bias),
                         batch_norm(out_channels), nn.ReLU())


class VariationalDropout(nn.Module):
    """Element-wise dropout whose mask is fixed for all ``f`` calls of one training step.

    The mask has the full shape of the input (batch included), entries
    ``Bernoulli(1 - p) / (1 - p)``. It is sampled at the first call after :meth:`reset_mask`
    and reused until the next reset, so every solver iteration, the Skip Reg. ``f(0, x)`` and
    the adjoint's re-evaluation of ``f`` see the *same* map (a fixed point of a map that
    changes at every call would not exist). The models reset it at the start of each
    ``forward``. A call with a different input shape samples a new mask. Identity in eval mode.
    (The implicit adjoint reuses the recorded graph, so its backward is unaffected by a later
    reset; the Neural ODE's ``"backsolve"`` adjoint re-evaluates ``f`` and so needs its
    backward to run before the next ``forward``, as in any ordinary training step.)
    """

    def __init__(self, p: float):
        super().__init__()
        _checks.in_range("dropout", p, 0.0, 1.0, high_open=True)
        self.p = float(p)
        self._mask: Optional[torch.Tensor] = None

    def reset_mask(self) -> None:
        self._mask = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return h
        mask = self._mask
        if mask is None or mask.shape != h.shape or mask.dtype != h.dtype or mask.device != h.device:
            keep = 1.0 - self.p
            mask = torch.empty_like(h, requires_grad=False).bernoulli_(keep).div_(keep)
            self._mask = mask
        return h * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ResidualBlock(nn.Module):
    """The per-scale block of ``f`` (docs/architectures.md §4.1)::

        h = conv2(ReLU(norm1(conv1(z))))               # conv1: C_in -> e*C, conv2: e*C -> C
        y = norm2(dropout(h) + injection)              # injection = x (scale 1) or 0
        out = norm3(ReLU(y + h))                       # residual h, norm after the ReLU (v0.2.6)
    """

    def __init__(self, in_channels: int, channels: int, *, expansion: int = 3, dropout: float = 0.0,
                 weight_norm: bool = False):
        super().__init__()
        _checks.positive_int("expansion", expansion)
        hidden = expansion * channels
        self.conv1 = conv(in_channels, hidden, 3, weight_norm=weight_norm)
        self.norm1 = batch_norm(hidden)
        self.conv2 = conv(hidden, channels, 3, weight_norm=weight_norm)
        # p = 0: the reference omits the layer altogether.
        self.dropout = VariationalDropout(dropout) if dropout > 0 else nn.Identity()
        self.norm2 = batch_norm(channels)
        self.norm3 = batch_norm(channels)

    def forward(self, z: torch.Tensor, injection: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv2(torch.relu(self.norm1(self.conv1(z))))
        y = self.dropout(h)
        if injection is not None:
            y = y + injection
        y = self.norm2(y)
        return self.norm3(torch.relu(y + h))


def downsample_module(in_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """``steps`` x (3x3 stride-2 conv -> BN -> ReLU), from scale ``i`` to scale ``i + steps``.

    Channels double at each step when that lands on ``out_channels``; otherwise they stay
    at ``in_channels`` until the last step, which maps to ``out_channels`` (§4.2).
    """
    _checks.positive_int("steps", steps)
    if in_channels * 2 ** steps == out_channels:
        pairs = [(in_channels * 2 ** m, in_channels * 2 ** (m + 1)) for m in range(steps)]
    else:
        pairs = [(in_channels, in_channels)] * (steps - 1) + [(in_channels, out_channels)]
    return nn.Sequential(*(conv_norm_relu(a, b, 3, stride=2) for a, b in pairs))


def upsample_module(in_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """3x3 conv -> BN -> ReLU -> nearest upsampling by ``2**steps`` (coarse to fine, §4.2)."""
    _checks.positive_int("steps", steps)
    return nn.Sequential(conv(in_channels, out_channels, 3), batch_norm(out_channels), nn.ReLU(),
                         nn.Upsample(scale_factor=2 ** steps, mode="nearest"))


def mapping_layers(channels: Sequence[int]) -> list:
    """The fusion matrix ``M[i][j]`` (source scale ``i`` to target ``j``; ``None`` on the diagonal)."""
    n = len(channels)
    return [[None if i == j else
             (downsample_module(channels[i], channels[j], j - i) if i < j
              else upsample_module(channels[i], channels[j], i - j))
             for j in range(n)] for i in range(n)]


def post_fuse(channels: int, *, weight_norm: bool = False) -> nn.Sequential:
    """``BN(ReLU(conv1x1(s)))`` after the fusion sum of one scale (§4.3)."""
    return nn.Sequential(conv(channels, channels, 1, weight_norm=weight_norm), nn.ReLU(),
                         batch_norm(channels))


def stem(in_channels: int, channels: int, *, downsample_times: int, num_scales: int) -> nn.Sequential:
    """The "initial layers" that produce the injection ``x`` (§4.5).

    Two 3x3 conv-BN-ReLU layers (stride 2 for the first ``downsample_times`` of them), further
    stride-2 layers when ``downsample_times > 2``, and a 1x1 conv-BN-ReLU "stage0" unless
    ``downsample_times == 0`` and there are at most two scales.
    """
    layers = [conv_norm_relu(in_channels, channels, 3, stride=2 if downsample_times >= 1 else 1),
              conv_norm_relu(channels, channels, 3, stride=2 if downsample_times >= 2 else 1)]
    layers += [conv_norm_relu(channels, channels, 3, stride=2) for _ in range(3, downsample_times + 1)]
    if not (downsample_times == 0 and num_scales <= 2):
        layers.append(conv_norm_relu(channels, channels, 1))
    return nn.Sequential(*layers)


def skip_predictor_branches(channels: Sequence[int], *, expansion: int = 3,
                            weight_norm: bool = False) -> list:
    """The Skip DEQ's explicit ``g`` (§4.7), one module per scale, each applied to ``x``.

    Scale 1: a dropout-free :class:`ResidualBlock` (expansion 3, the reference's default, not
    the model's); scale ``i >= 2``: ``downsample_module(C_1 -> C_i, i - 1)`` from ``x`` directly.
    """
    first = ResidualBlock(channels[0], channels[0], expansion=expansion, dropout=0.0,
                          weight_norm=weight_norm)
    return [first] + [downsample_module(channels[0], c, i) for i, c in enumerate(channels[1:], start=1)]


class Bottleneck(nn.Module):
    """Head bottleneck ``C -> 4h`` with tracked BatchNorms (§4.6)::

        y = ReLU( BNt(conv1x1(ReLU(BNt(conv3x3(ReLU(BNt(conv1x1(z)))))))) + BNt(conv1x1(z)) )
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        out = self.expansion * channels
        self.rescale = nn.Sequential(conv(in_channels, out, 1), tracked_batch_norm(out))
        self.conv_in = conv(in_channels, channels, 1)
        self.mapping = nn.Sequential(
            tracked_batch_norm(channels), nn.ReLU(), conv(channels, channels, 3),
            tracked_batch_norm(channels), nn.ReLU(), conv(channels, out, 1), tracked_batch_norm(out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.mapping(self.conv_in(z)) + self.rescale(z))


class ClassificationHead(nn.Module):
    """The "final layers": per-scale bottlenecks, fine-to-coarse fusion, 1x1 conv, pooling, linear.

    ``t = y_1; t = ReLU(BN(conv3x3_s2(t))) + y_{i+1}`` for each coarser scale, then
    ``Linear(mean_{H,W} ReLU(BN(conv1x1(t))))``. The last linear layer is Glorot-uniform with
    zero bias (Lux's ``Dense`` default).
    """

    def __init__(self, channels: Sequence[int], head_channels: Sequence[int], final_channels: int,
                 num_classes: int):
        super().__init__()
        if len(head_channels) != len(channels):
            raise ValueError(f"head_channels has {len(head_channels)} entries but channels has "
                             f"{len(channels)}; they must match")
        widths = [Bottleneck.expansion * h for h in head_channels]
        self.bottlenecks = nn.ModuleList(Bottleneck(c, h) for c, h in zip(channels, head_channels))
        self.downsamples = nn.ModuleList(conv_norm_relu(a, b, 3, stride=2, bias=True)
                                         for a, b in zip(widths[:-1], widths[1:]))
        self.final = conv_norm_relu(widths[-1], final_channels, 1, bias=True)
        self.classifier = nn.Linear(final_channels, num_classes)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, z: Sequence[torch.Tensor]) -> torch.Tensor:
        t = self.bottlenecks[0](z[0])
        for down, bottleneck, z_i in zip(self.downsamples, self.bottlenecks[1:], z[1:]):
            t = down(t) + bottleneck(z_i)
        return self.classifier(self.final(t).mean(dim=(2, 3)))
