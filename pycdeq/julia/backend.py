"""``JuliaModel``: a pycdeq model run by DeepEquilibriumNetworks.jl through PycdeqBridge.

The Julia side owns the Lux model, its parameters, states and the Adam state; this class
holds an opaque session handle and converts at the boundary (:mod:`.convert`). Calls are
coarse: one per forward pass, gradient, training batch or training run (``fit``), never one
per solver step.

    jm = JuliaModel.from_torch(model)        # same architecture, solver and weights
    jm = JuliaModel.from_torch(model, device="cuda")   # GPU (checked before Julia starts)
    out = jm(x)                              # logits, z_star, z0, nfe, residual (torch)
    losses = jm.fit(x_train, y_train, epochs=1)
    jm.copy_to(model)                        # trained weights back into the torch model
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import _runtime
from .convert import check_labels, from_julia, plan_transfer, to_julia
from .devices import check_device
from .params import flatten_params, load_params_into, model_params, order_from_layout, parse_layout, unflatten_params
from .translate import SKIP_WEIGHT, ModelSpec, translate


@dataclass
class JuliaForward:
    """One Julia forward pass, as torch tensors in torch layout (batch first)."""

    logits: torch.Tensor  # (batch, classes)
    z_star: torch.Tensor  # (batch, width)
    z0: torch.Tensor  # (batch, width)
    nfe: int  # the solver's evaluations for the whole batch (-1: not reported)
    residual: torch.Tensor  # (batch,), ||f(z*, x) - z*|| per sample (the spec's norm)


class JuliaModel:
    """A model on the Julia backend. Build it with :meth:`from_torch` or from a spec.

    ``device="cuda"`` is checked before Julia starts (:func:`~pycdeq.julia.devices.check_device`
    refuses a solver that cannot run there) and declares CUDA.jl / LuxCUDA before the start,
    so that juliapkg resolves them with the rest (:func:`pycdeq.julia._runtime.ensure_cuda`).
    """

    def __init__(self, spec: ModelSpec, *, seed: int = 0, bridge: Any = None, device="cpu"):
        target = check_device(spec, device)  # refusals first: nothing has started yet
        if target.type == "cuda" and bridge is None:
            _runtime.ensure_cuda()
        self.spec = spec
        self._bridge = bridge if bridge is not None else _runtime.bridge()
        self._session = self._bridge.build_model(**spec.julia_kwargs(seed=seed))
        self._order = order_from_layout(spec, parse_layout(str(self._bridge.layout(self._session))))
        self.device = torch.device("cpu")
        if target.type == "cuda":
            self._bridge.to_gpu_b(self._session)
            self.device = torch.device("cuda")

    @classmethod
    def from_torch(cls, model: torch.nn.Module, *, seed: int = 0, bridge: Any = None,
                   device="cpu") -> "JuliaModel":
        """Translate ``model`` (:func:`~pycdeq.julia.translate.translate`) and copy its weights."""
        julia_model = cls(translate(model), seed=seed, bridge=bridge, device=device)
        julia_model.load_from(model)
        return julia_model

    # --- parameters ---------------------------------------------------------------------
    def get_params(self) -> np.ndarray:
        """All parameters as one float32 vector in Julia's layout and order (a copy)."""
        return np.array(self._bridge.get_params(self._session), dtype=np.float32, copy=True)

    def set_params(self, flat) -> None:
        flat = np.ascontiguousarray(flat, dtype=np.float32)
        if flat.shape != (self.spec.num_params,):
            raise ValueError(f"expected {self.spec.num_params} parameters, got shape {flat.shape}")
        self._bridge.set_params_b(self._session, flat)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The Julia parameters as torch-layout tensors, keyed by the torch model's names."""
        return unflatten_params(self.spec, self.get_params(), self._order)

    def load_from(self, model: torch.nn.Module) -> None:
        """Copy the torch model's weights into Julia (layouts converted)."""
        self.set_params(flatten_params(self.spec, model_params(self.spec, model), self._order))

    def copy_to(self, model: torch.nn.Module) -> None:
        """Copy the Julia weights into the torch model (e.g. after ``fit``)."""
        load_params_into(model, self.spec, self.get_params(), self._order)

    # --- data crossing ------------------------------------------------------------------
    def _features(self, x: torch.Tensor, name: str = "x", *, device: Optional[torch.device] = None):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"{name} must be (batch, features) or (batch, C, H, W), got shape {tuple(x.shape)}")
        features = x.reshape(x.shape[0], -1)
        if features.shape[1] != self.spec.in_features:
            raise ValueError(f"{name} has {features.shape[1]} features per sample; the model takes "
                             f"{self.spec.in_features}")
        expected = self.device if device is None else device
        if x.device.type != expected.type:
            raise ValueError(f"{name} is on {x.device} but the Julia model is on {expected}; "
                             f"move one of them (JuliaModel.to)")
        plan = plan_transfer(name, features)
        return to_julia(features, plan, self._bridge)

    def _back(self, array) -> torch.Tensor:
        return from_julia(array, device=self.device, bridge=self._bridge,
                          synchronize=_runtime.cuda_synchronize)

    # --- computation --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> JuliaForward:
        """Inference pass; ``x`` is ``(batch, features)`` or images (flattened)."""
        logits, z_star, z0, nfe, residual = self._bridge.forward(self._session, self._features(x))
        return JuliaForward(logits=self._back(logits), z_star=self._back(z_star), z0=self._back(z0),
                            nfe=int(nfe), residual=self._back(residual))

    __call__ = forward

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes (0-based), a CPU ``int64`` tensor."""
        classes = self._bridge.predict(self._session, self._features(x))
        return torch.as_tensor(np.asarray(classes, dtype=np.int64))

    def gradients(self, x: torch.Tensor, cotangent: torch.Tensor) -> Tuple[float, Dict[str, torch.Tensor]]:
        """``sum(logits * cotangent)`` and its gradient w.r.t. every parameter (torch layout)."""
        expected = (x.shape[0], self.spec.num_classes)
        if not isinstance(cotangent, torch.Tensor) or tuple(cotangent.shape) != expected:
            raise ValueError(f"cotangent must be a tensor of shape {expected}")
        if cotangent.device.type != self.device.type:
            raise ValueError(f"cotangent is on {cotangent.device} but the Julia model is on {self.device}")
        plan = plan_transfer("cotangent", cotangent)
        value, flat = self._bridge.value_and_gradient(self._session, self._features(x),
                                                      to_julia(cotangent, plan, self._bridge))
        return float(value), unflatten_params(self.spec, np.asarray(flat), self._order)

    def train_step(self, x: torch.Tensor, labels, *, learning_rate: float = 1e-3,
                   skip_weight: float = SKIP_WEIGHT) -> float:
        """One Adam step in Julia on one batch; returns the loss before the step."""
        features = self._features(x)
        targets = check_labels("labels", labels, x.shape[0], self.spec.num_classes)
        return float(self._bridge.train_step_b(self._session, features, targets,
                                               learning_rate=float(learning_rate),
                                               skip_weight=float(skip_weight)))

    def fit(self, x: torch.Tensor, labels, *, epochs: int = 1, batch_size: int = 32,
            learning_rate: float = 1e-3, skip_weight: float = SKIP_WEIGHT, shuffle: bool = True,
            seed: int = 0) -> List[float]:
        """Train in Julia (CE + ``skip_weight`` x skip loss for Skip variants, Adam); returns
        the mean loss of each epoch. The data crosses once; batches are cut in Julia."""
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        x = x.detach().cpu()  # the training set stays on the host; Julia moves batches
        features = self._features(x, device=torch.device("cpu"))
        targets = check_labels("labels", labels, x.shape[0], self.spec.num_classes)
        losses = self._bridge.fit_b(self._session, features, targets, epochs=epochs,
                                    batch_size=batch_size, learning_rate=float(learning_rate),
                                    skip_weight=float(skip_weight), shuffle=bool(shuffle),
                                    seed=int(seed))
        return [float(v) for v in losses]

    def to(self, device) -> "JuliaModel":
        """Move the Julia session to ``"cuda"`` or ``"cpu"``. A solver that cannot run on the GPU
        is refused first (:func:`~pycdeq.julia.devices.check_device`). CUDA.jl / LuxCUDA must
        be in the Julia environment: ask for the GPU before Julia starts
        (``from_torch(model, device="cuda")``) unless an earlier run installed them."""
        device = check_device(self.spec, device)
        if device.type == "cuda":
            _runtime.ensure_cuda()
            self._bridge.to_gpu_b(self._session)
        else:
            self._bridge.to_cpu_b(self._session)
        self.device = torch.device(device.type)
        return self

    # --- persistence --------------------------------------------------------------------
    def save(self, path: str, *, include_optimiser: bool = True) -> None:
        """Julia session to ``path`` (Serialization) and the spec to ``path + ".spec.json"``."""
        self._bridge.save(self._session, os.fspath(path), include_optimiser=include_optimiser)
        with open(os.fspath(path) + ".spec.json", "w") as file:
            file.write(self.spec.to_json())

    @classmethod
    def load(cls, path: str, *, bridge: Any = None) -> "JuliaModel":
        with open(os.fspath(path) + ".spec.json") as file:
            spec = ModelSpec.from_dict(json.load(file))
        julia_model = cls.__new__(cls)
        julia_model.spec = spec
        julia_model._bridge = bridge if bridge is not None else _runtime.bridge()
        julia_model._session = julia_model._bridge.load(os.fspath(path))
        layout = parse_layout(str(julia_model._bridge.layout(julia_model._session)))
        julia_model._order = order_from_layout(spec, layout)
        julia_model.device = torch.device("cpu")
        return julia_model

    def __repr__(self) -> str:
        return (f"JuliaModel({self.spec.architecture}, variant={self.spec.variant}, "
                f"solver={self.spec.solver.julia}, device={self.device})")
