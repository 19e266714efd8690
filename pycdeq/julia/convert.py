"""Layouts: torch weights and tensors <-> Lux (Julia) arrays. Pure planning, no Julia needed.

**Convention.** A "Lux-layout" NumPy array has the *Lux shape* and is indexed like the Julia
array (``a[i, j] == W[i+1, j+1]``); the Julia memory of it is ``a.ravel(order="F")``
(column-major). Flat parameter vectors are these ravels concatenated (:mod:`.translate`).

===================  =========================  =========================  ===================
object               torch                      Lux                        conversion
===================  =========================  =========================  ===================
``nn.Linear`` W      ``(out, in)`` row-major    ``Dense``: ``(out, in)``   same shape; memory
                                                column-major               order differs: one
                                                                           copy (``ravel("F")``)
bias / BatchNorm     ``(c,)``                   ``(c,)``                   identity; BatchNorm
vectors                                                                    ``weight -> scale``
``nn.Conv2d`` W      ``(O, I, kH, kW)``         ``Conv``: ``(kW, kH, I,    reverse the dims; a
                                                O)``                       C-contiguous W gives
                                                                           an F-contiguous view
                                                                           (zero-copy)
activations          ``(N, C, H, W)``           ``(W, H, C, N)`` (WHCN)    reverse the dims
                     ``(N, F)``                 ``(F, N)``                 (``x.T``: zero-copy)
===================  =========================  =========================  ===================

**Kernel flip.** torch's ``Conv2d`` computes a cross-correlation. Lux's ``Conv`` defaults to
``cross_correlation=false``, a true convolution (NNlib flips the kernel), so a torch kernel
must either go to ``Conv(...; cross_correlation=true)`` unchanged (what this module
recommends: :func:`conv_options_to_lux` sets it) or be flipped along both spatial axes for
a default ``Conv`` (``plan_conv_weight(shape, cross_correlation=False)``).

**Why reversing the dims is the whole story.** A C-contiguous ``(N, C, H, W)`` buffer read
column-major *is* a ``(W, H, C, N)`` array: ``x.T`` in NumPy is that view, free. The first
spatial axis of the Julia array is W, and it pairs with the first kernel axis, kW; stride,
padding and dilation tuples are reversed the same way.

**Crossing into Julia** (:func:`plan_transfer`): CPU tensors go through NumPy
(``t.detach().contiguous().numpy().T``: a zero-copy, column-major view that juliacall wraps
as a ``PyArray``, again without copying; the bridge then makes one owned ``Float32`` copy,
so Julia never aliases Python memory). CUDA tensors go through DLPack
(``.contiguous()`` first: DLPack.jl misreads non-contiguous strides; the device is
synchronised first because DLPack.jl asks for the capsule without a stream). Results come
back zero-copy: ``np.asarray`` of a Julia array is its column-major buffer, whose ``.T`` is
the C-contiguous torch layout (``torch.from_numpy`` shares it); on the GPU
``DLPack.share`` hands the ``CuArray`` to ``torch.from_dlpack`` after a CUDA.jl sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple, Union

import numpy as np
import torch
from torch import nn

ArrayLike = Union[np.ndarray, torch.Tensor]

SUPPORTED_DTYPES = (torch.float32,)


@dataclass(frozen=True)
class LayoutPlan:
    """How one array moves between the torch and the Lux layout.

    ``to_lux(a) = flip(a.transpose(permutation), flip_axes)``; ``from_lux`` undoes it.
    ``view`` says whether ``to_lux`` of a C-contiguous array is already column-major in
    memory (then Julia can wrap it without a copy).
    """

    kind: str
    torch_shape: Tuple[int, ...]
    lux_shape: Tuple[int, ...]
    permutation: Tuple[int, ...]
    flip_axes: Tuple[int, ...] = ()

    @property
    def view(self) -> bool:
        return self.permutation == tuple(reversed(range(len(self.permutation)))) and not self.flip_axes


def _shape(name: str, shape, ndim: int) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim or any(s < 1 for s in shape):
        raise ValueError(f"{name} must be a {ndim}-d shape of positive sizes, got {shape}")
    return shape


def plan_linear_weight(shape) -> LayoutPlan:
    """``nn.Linear.weight (out, in)`` -> ``Dense`` weight ``(out, in)`` (column-major)."""
    shape = _shape("a Linear weight shape", shape, 2)
    return LayoutPlan("linear_weight", shape, shape, (0, 1))


def plan_vector(shape) -> LayoutPlan:
    """Biases, BatchNorm scale/bias/running statistics: unchanged."""
    shape = _shape("a vector shape", shape, 1)
    return LayoutPlan("vector", shape, shape, (0,))


def plan_conv_weight(shape, *, cross_correlation: bool = True) -> LayoutPlan:
    """``nn.Conv2d.weight (O, I, kH, kW)`` -> ``Conv`` weight ``(kW, kH, I, O)``.

    ``cross_correlation=True`` is for ``Conv(...; cross_correlation=true)`` (no flip);
    ``False`` flips both spatial axes for Lux's default (true convolution).
    """
    o, i, kh, kw = _shape("a Conv2d weight shape", shape, 4)
    flip = () if cross_correlation else (0, 1)
    return LayoutPlan("conv_weight", (o, i, kh, kw), (kw, kh, i, o), (3, 2, 1, 0), flip)


def plan_activation(shape) -> LayoutPlan:
    """Batch-first torch activations ``(N, ...)`` -> batch-last Lux ``(..., N)``, reversed:
    ``(N, F) -> (F, N)``, ``(N, C, H, W) -> (W, H, C, N)``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        raise ValueError("an activation needs at least one dimension (the batch)")
    order = tuple(reversed(range(len(shape))))
    return LayoutPlan("activation", shape, tuple(shape[k] for k in order), order)


def to_lux(array: ArrayLike, plan: LayoutPlan) -> np.ndarray:
    """torch layout -> Lux layout (a view where possible: see ``plan.view``)."""
    a = _numpy(array, "array")
    if tuple(a.shape) != plan.torch_shape:
        raise ValueError(f"expected a {plan.kind} of shape {plan.torch_shape}, got {tuple(a.shape)}")
    a = a.transpose(plan.permutation)
    return np.flip(a, plan.flip_axes) if plan.flip_axes else a


def from_lux(array: ArrayLike, plan: LayoutPlan) -> np.ndarray:
    """Lux layout -> torch layout (exact inverse of :func:`to_lux`)."""
    a = _numpy(array, "array")
    if tuple(a.shape) != plan.lux_shape:
        raise ValueError(f"expected a Lux {plan.kind} of shape {plan.lux_shape}, got {tuple(a.shape)}")
    if plan.flip_axes:
        a = np.flip(a, plan.flip_axes)
    return a.transpose(np.argsort(plan.permutation))


def julia_memory(array: np.ndarray) -> np.ndarray:
    """The column-major element sequence Julia stores for a Lux-layout array (1-d)."""
    return np.asarray(array).ravel(order="F")


def from_julia_memory(flat: np.ndarray, lux_shape) -> np.ndarray:
    """Inverse of :func:`julia_memory`: a Lux-layout view of ``flat``."""
    return np.asarray(flat).reshape(tuple(lux_shape), order="F")


def reverse_dims(x: ArrayLike) -> ArrayLike:
    """NCHW <-> WHCN (and NF <-> FN): a view for NumPy arrays and torch tensors."""
    if isinstance(x, torch.Tensor):
        return x.permute(*reversed(range(x.dim())))
    return np.asarray(x).T


def _numpy(array: ArrayLike, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        if array.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU for a layout conversion, got {array.device}")
        return array.detach().numpy()
    if isinstance(array, np.ndarray):
        return array
    raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(array).__name__}")


# --- whole layers -----------------------------------------------------------------------


def _pair(value) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value  # torch's Conv2d stores these as pairs
    return int(first), int(second)


def conv_options_to_lux(conv: nn.Conv2d) -> Dict[str, Any]:
    """The ``Lux.Conv`` arguments equivalent to a torch ``Conv2d`` (spatial tuples reversed,
    ``cross_correlation=True`` so the kernel is used unflipped)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"only numeric zero padding converts to Lux, got padding={conv.padding!r}, "
                         f"padding_mode={conv.padding_mode!r}")
    kh, kw = conv.kernel_size
    return {
        "kernel": (kw, kh), "in_channels": conv.in_channels, "out_channels": conv.out_channels,
        "stride": tuple(reversed(_pair(conv.stride))), "pad": tuple(reversed(_pair(conv.padding))),
        "dilation": tuple(reversed(_pair(conv.dilation))), "groups": conv.groups,
        "use_bias": conv.bias is not None, "cross_correlation": True,
    }


def batchnorm_to_lux(bn: nn.modules.batchnorm._BatchNorm) -> Dict[str, Any]:
    """Lux ``BatchNorm`` parameters (``scale``, ``bias``), states (``running_mean``,
    ``running_var``) and options from a torch BatchNorm. Both frameworks update running
    statistics as ``(1 - momentum) * old + momentum * batch`` with the unbiased batch variance."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn must be a torch BatchNorm layer, got {type(bn).__name__}")
    if bn.track_running_stats and bn.momentum is None:
        raise ValueError("BatchNorm(momentum=None) (a cumulative average) has no Lux counterpart")
    params = {} if not bn.affine else {
        "scale": to_lux(bn.weight, plan_vector(bn.weight.shape)).copy(),
        "bias": to_lux(bn.bias, plan_vector(bn.bias.shape)).copy()}
    states = {}
    if bn.track_running_stats:
        # torch registers the running buffers exactly when it tracks statistics.
        assert bn.running_mean is not None and bn.running_var is not None
        states = {"running_mean": bn.running_mean.detach().numpy().copy(),
                  "running_var": bn.running_var.detach().numpy().copy()}
    options = {"chs": bn.num_features, "epsilon": bn.eps, "momentum": bn.momentum,
               "affine": bn.affine, "track_stats": bn.track_running_stats}
    return {"params": params, "states": states, "options": options}


def batchnorm_from_lux(converted: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`batchnorm_to_lux`: a torch BatchNorm ``state_dict`` (without
    ``num_batches_tracked``, which Lux does not keep)."""
    names = {"scale": "weight", "bias": "bias", "running_mean": "running_mean",
             "running_var": "running_var"}
    out = {}
    for group in ("params", "states"):
        for key, value in converted[group].items():
            out[names[key]] = torch.from_numpy(np.array(value, copy=True))
    return out


# --- tensors crossing into Julia ---------------------------------------------------------


@dataclass(frozen=True)
class TransferPlan:
    """How one tensor reaches Julia: ``route`` ``"numpy"`` (CPU) or ``"dlpack"`` (CUDA)."""

    route: str
    copy: bool  # not contiguous: .contiguous() makes one copy first
    synchronize: bool  # CUDA: wait for torch's queued work before Julia reads the memory
    shape: Tuple[int, ...]
    julia_shape: Tuple[int, ...]


def check_floating(name: str, tensor, *, dtypes=SUPPORTED_DTYPES) -> None:
    """Type/dtype/layout checks shared by every tensor handed to the Julia backend."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")
    if tensor.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed} (the Julia backend computes in Float32), "
                        f"got {tensor.dtype}; convert it with .float()")


def plan_transfer(name: str, tensor: torch.Tensor, *, dtypes=SUPPORTED_DTYPES) -> TransferPlan:
    """Check ``tensor`` and decide how it crosses into Julia (raises with ``name`` in the message)."""
    check_floating(name, tensor, dtypes=dtypes)
    device = tensor.device.type
    if device not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {tensor.device}; the Julia backend takes CPU or CUDA tensors")
    shape = tuple(tensor.shape)
    return TransferPlan(route="numpy" if device == "cpu" else "dlpack",
                        copy=not tensor.is_contiguous(), synchronize=device == "cuda",
                        shape=shape, julia_shape=tuple(reversed(shape)))


def check_labels(name: str, labels, batch: int, num_classes: int) -> np.ndarray:
    """0-based integer class labels as a contiguous int64 NumPy vector of length ``batch``."""
    if isinstance(labels, torch.Tensor):
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class indices, got {labels.dtype}")
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match the inputs, got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return np.ascontiguousarray(labels, dtype=np.int64)


def to_julia(tensor: torch.Tensor, plan: TransferPlan, bridge=None):
    """What to pass to a bridge function: a NumPy view (CPU) or a DLPack-wrapped Julia array."""
    data = tensor.detach()
    if plan.copy:
        data = data.contiguous()
    if plan.route == "numpy":
        return data.numpy().T  # column-major view, dims reversed: no copy
    if plan.synchronize:
        torch.cuda.synchronize(data.device)
    if bridge is None:
        raise ValueError("a CUDA tensor needs the Julia bridge (DLPack) to cross into Julia")
    return bridge.from_dlpack(data)


def from_julia(array, *, device: torch.device, bridge=None, synchronize=None) -> torch.Tensor:
    """A Julia array (juliacall ``ArrayValue``) as a torch tensor with the dims reversed back.

    CPU: zero-copy through NumPy (the tensor keeps the Julia array alive). CUDA: through
    DLPack after ``synchronize()`` (CUDA.jl's stream)."""
    if device.type == "cpu":
        host = np.asarray(array)
        return torch.from_numpy(host.T)
    if bridge is None:
        raise ValueError("a CUDA result needs the Julia bridge (DLPack) to cross back")
    if synchronize is not None:
        synchronize()
    return bridge.share(array, torch.from_dlpack)
