"""A Python stand-in for the Julia module PycdeqBridge, with Julia's conventions.

It receives and returns what juliacall would: inputs as NumPy views of shape
``(features, batch)`` (column-major), flat parameter vectors in Julia memory order, arrays
returned as column-major (F-ordered) NumPy arrays of the Julia shape, 0-based labels.
Parameters live in Lux shapes and are read with ``reshape(..., order="F")``, so a layout
slip anywhere on the Python side (a missing transpose, a wrong ravel order, a wrong
parameter order) shows up as a numerical mismatch against the torch model.

The maths is computed independently of pycdeq's solvers, in float64: Picard iteration to
machine precision for the equilibrium (the test models are contractive), the exact implicit
gradient by unrolling from the converged ``z*`` (the Neumann series of a contraction), RK4
with many steps for the Neural ODE, ``fixed_depth`` calls of ``f`` on the running state when
the DEQ is unrolled. It also reports its parameters in a *different order* from the
translation's (``init`` before ``model``, as a Lux container could), so the Python side must
follow ``layout``.

``FakeBridge(repeat_same_input=True)`` unrolls as DeepEquilibriumNetworks' own pretraining
mode does (Lux's ``RepeatedLayer`` without input injection: every repeat sees ``(z0, x)``),
so that a test can show the parity harness catches that behaviour.
"""

from __future__ import annotations

import pickle
from typing import Dict, List

import numpy as np
import torch

KEYWORDS = {"architecture", "in_features", "width", "num_classes", "variant", "solver", "memory",
            "m", "beta", "termination", "norm", "safe", "best", "abstol", "reltol", "maxiters",
            "ode_abstol", "ode_reltol", "dt", "dtmin", "adaptive", "adjoint", "adjoint_abstol",
            "adjoint_reltol", "adjoint_maxiters", "adjoint_restart", "fixed_depth", "seed"}


class FakeSession:
    def __init__(self, options: dict):
        self.options = dict(options)
        width, features, classes = options["width"], options["in_features"], options["num_classes"]
        shapes = {"layer_1.weight": (width, features), "layer_1.bias": (width,)}
        if options["variant"] == "skip":
            shapes.update({"layer_2.init.weight": (width, width), "layer_2.init.bias": (width,)})
        shapes.update({"layer_2.model.layer_1.weight": (width, width),
                       "layer_2.model.layer_2.weight": (width, width),
                       "layer_3.weight": (classes, width), "layer_3.bias": (classes,)})
        rng = np.random.default_rng(options["seed"])
        self.params = {k: np.asfortranarray(rng.normal(size=s).astype(np.float32)) for k, s in shapes.items()}
        self.paths: List[str] = list(shapes)
        self.optimiser = None
        self.calls: List[str] = []


def _as_julia(array: np.ndarray) -> np.ndarray:
    """What np.asarray gives for a Julia Array: F-ordered, float32."""
    return np.asfortranarray(np.asarray(array, dtype=np.float32))


class FakeBridge:
    """The Python-visible API of PycdeqBridge (``!`` spelled ``_b`` as juliacall does)."""

    def __init__(self, *, repeat_same_input: bool = False):
        self.repeat_same_input = repeat_same_input

    def build_model(self, **kwargs) -> FakeSession:
        unknown = set(kwargs) - KEYWORDS
        missing = {"in_features", "solver"} - set(kwargs)
        if unknown or missing:
            raise TypeError(f"bad keywords: unknown {sorted(unknown)}, missing {sorted(missing)}")
        for key, value in kwargs.items():
            if not isinstance(value, (str, int, float, bool)):
                raise TypeError(f"{key}: juliacall would pass {type(value).__name__} as a Py object")
        return FakeSession(kwargs)

    def layout(self, s: FakeSession) -> str:
        return ";".join(f"{p}={'x'.join(map(str, s.params[p].shape))}" for p in s.paths)

    def get_params(self, s: FakeSession) -> np.ndarray:
        return np.concatenate([s.params[p].ravel(order="F") for p in s.paths])

    def set_params_b(self, s: FakeSession, flat) -> None:
        flat = np.asarray(flat, dtype=np.float32)
        total = sum(s.params[p].size for p in s.paths)
        if flat.shape != (total,):
            raise ValueError(f"DimensionMismatch: expected {total} parameters, got {flat.shape}")
        offset = 0
        for p in s.paths:
            n = s.params[p].size
            s.params[p] = np.asfortranarray(flat[offset:offset + n].reshape(s.params[p].shape, order="F"))
            offset += n

    # --- maths (float64 torch, Julia layout: columns are samples) ---------------------------
    @staticmethod
    def _tensors(s: FakeSession, requires_grad=False) -> Dict[str, torch.Tensor]:
        return {p: torch.tensor(np.array(v, dtype=np.float64), requires_grad=requires_grad)
                for p, v in s.params.items()}

    @staticmethod
    def _input(s: FakeSession, x) -> torch.Tensor:
        x = np.array(x, dtype=np.float32)  # Julia: Array{Float32}(x), an owned copy
        if x.ndim != 2 or x.shape[0] != s.options["in_features"]:
            raise ValueError(f"expected (features={s.options['in_features']}, batch), got {x.shape}")
        return torch.from_numpy(x.astype(np.float64))

    def _run(self, s: FakeSession, P, x):
        relu = torch.relu
        h = relu(P["layer_1.weight"] @ x + P["layer_1.bias"][:, None])

        def f(z):
            return relu(P["layer_2.model.layer_1.weight"] @ z) + relu(P["layer_2.model.layer_2.weight"] @ h)

        variant = s.options["variant"]
        zeros = torch.zeros_like(h)
        if variant == "skip":
            z0 = relu(P["layer_2.init.weight"] @ h + P["layer_2.init.bias"][:, None])
        elif variant == "skip_reg":
            z0 = f(zeros)
        else:
            z0 = zeros
        if variant == "node":
            z, steps = zeros, 400
            dt = 1.0 / steps
            for _ in range(steps):  # classic RK4 on dz/dt = f(z) - z over (0, 1)
                k1 = f(z) - z
                k2 = f(z + dt / 2 * k1) - (z + dt / 2 * k1)
                k3 = f(z + dt / 2 * k2) - (z + dt / 2 * k2)
                k4 = f(z + dt * k3) - (z + dt * k3)
                z = z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            nfe = 4 * steps
        elif s.options["fixed_depth"] > 0:  # unrolled: plain backprop through the calls
            z, nfe = z0, s.options["fixed_depth"]
            for _ in range(nfe):
                z = f(z0 if self.repeat_same_input else z)
        else:
            with torch.no_grad():
                z, nfe = z0.detach(), 0
                for nfe in range(1, 2001):
                    z_new = f(z)
                    done = float((z_new - z).abs().max()) < 1e-13
                    z = z_new
                    if done:
                        break
            for _ in range(60):  # the implicit gradient: a converged Neumann series
                z = f(z)
        logits = P["layer_3.weight"] @ z + P["layer_3.bias"][:, None]
        return logits, h, z, z0, f, nfe

    def forward(self, s: FakeSession, x):
        s.calls.append("forward")
        with torch.no_grad():
            logits, _, z, z0, f, nfe = self._run(s, self._tensors(s), self._input(s, x))
            r = f(z) - z
        residual = r.norm(dim=0) if s.options["norm"] == "l2" else r.abs().amax(dim=0)
        return (_as_julia(logits), _as_julia(z), _as_julia(z0), int(nfe), _as_julia(residual))

    def value_and_gradient(self, s: FakeSession, x, cotangent):
        P = self._tensors(s, requires_grad=True)
        w = torch.from_numpy(np.array(cotangent, dtype=np.float64))
        logits = self._run(s, P, self._input(s, x))[0]
        if w.shape != logits.shape:
            raise ValueError(f"cotangent shape {tuple(w.shape)} != logits {tuple(logits.shape)}")
        value = (logits * w).sum()
        value.backward()
        # Like Zygote's `nothing`: a parameter the logits do not depend on gets zeros (g of a
        # Skip DEQ: z* does not depend on z0, so g is trained by the skip loss only).
        grads = [np.zeros(s.params[p].size, np.float32) if P[p].grad is None
                 else P[p].grad.numpy().astype(np.float32).ravel(order="F") for p in s.paths]
        return float(value.detach()), np.concatenate(grads)

    def train_step_b(self, s: FakeSession, x, labels, *, learning_rate, skip_weight):
        labels = np.asarray(labels)
        if labels.dtype != np.int64:
            raise TypeError(f"labels arrive as {labels.dtype}")
        P = self._tensors(s, requires_grad=True)
        if s.optimiser is None:
            s.optimiser = {"params": list(P), "state": None}
        logits, _, z, z0, _, _ = self._run(s, P, self._input(s, x))
        loss = torch.nn.functional.cross_entropy(logits.T, torch.from_numpy(labels))
        if s.options["variant"] in ("skip", "skip_reg"):
            loss = loss + skip_weight * (z - z0).abs().mean()
        loss.backward()
        for p in s.paths:  # plain gradient descent: enough to see the loss fall
            s.params[p] = np.asfortranarray((P[p] - learning_rate * P[p].grad).detach().numpy().astype(np.float32))
        return float(loss.detach())

    def fit_b(self, s: FakeSession, x, labels, *, epochs, batch_size, learning_rate, skip_weight,
              shuffle, seed):
        x = np.array(x, dtype=np.float32)
        labels = np.asarray(labels)
        rng = np.random.default_rng(seed)
        losses = []
        for _ in range(epochs):
            order = rng.permutation(x.shape[1]) if shuffle else np.arange(x.shape[1])
            total = 0.0
            for start in range(0, x.shape[1], batch_size):
                batch = order[start:start + batch_size]
                total += self.train_step_b(s, x[:, batch], labels[batch], learning_rate=learning_rate,
                                           skip_weight=skip_weight) * len(batch)
            losses.append(total / x.shape[1])
        return losses

    def predict(self, s: FakeSession, x):
        logits = self.forward(s, x)[0]
        return np.argmax(logits, axis=0).astype(np.int64)

    def save(self, s: FakeSession, path: str, *, include_optimiser: bool = True):
        with open(path, "wb") as file:
            pickle.dump({"options": s.options, "params": self.get_params(s)}, file)
        return path

    def load(self, path: str) -> FakeSession:
        with open(path, "rb") as file:
            data = pickle.load(file)
        s = self.build_model(**data["options"])
        self.set_params_b(s, data["params"])
        return s
