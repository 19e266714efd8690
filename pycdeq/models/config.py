"""What a paper model is: architecture, variant, sizes, solver settings (frozen, validated).

A :class:`ModelConfig` fully describes a model; ``model.config`` holds the one a model was
built from, and :func:`pycdeq.models.model_from_config` rebuilds it. Every option is a
field: one that does not apply to the chosen variant (``t1`` for a DEQ, ``jacobian_reg``
for the Neural ODE) must keep its default, otherwise construction fails naming it, so no
setting is ever silently ignored. ``solver=None`` / ``adjoint=None`` are replaced by the
paper's settings (:mod:`pycdeq.models.defaults`) when the config is created, so the stored
config always names the solver actually used.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from .. import _checks
from ..layers.deq import OUTPUTS, check_layer_options
from ..layers.neural_ode import check_node_options
from ..layers.regularizers import JacobianRegularization
from ..solvers import DiscreteSolver, ODEMethod, Solver
from . import defaults

ARCHITECTURES = ("mnist-dense", "mnist-conv", "cifar10-small", "cifar10-large")
VARIANTS = ("vanilla", "skip", "skip_reg", "node")


def _int_tuple(name: str, value) -> Tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints, got {type(value).__name__}")
    value = tuple(value)
    if not value:
        raise ValueError(f"{name} must not be empty")
    for v in value:
        _checks.positive_int(f"entries of {name}", v)
    return value


@dataclass(frozen=True)
class DenseSizes:
    """Sizes of the fully connected MNIST model: the DEQ state width."""

    width: int = 128

    def __post_init__(self):
        _checks.positive_int("width", self.width)


@dataclass(frozen=True)
class MDEQSizes:
    """Sizes of a multiscale (MDEQ) model, named as in the reference's YAML configs.

    ``channels[i]``: channels of scale ``i`` (scale 1 is the finest); ``expansion``: the
    residual blocks' hidden width factor; ``dropout``: variational dropout rate inside ``f``;
    ``weight_norm``: weight-normalise the convs of ``f`` and of the Skip predictor;
    ``head_channels[i]``: bottleneck width per scale (outputs ``4 * head_channels[i]``);
    ``final_channels``: width before pooling; ``downsample_times``: stride-2 stem layers;
    ``skip_expansion``: expansion of the Skip predictor's residual block (3 in the reference).
    """

    channels: Tuple[int, ...]
    expansion: int
    dropout: float
    weight_norm: bool
    head_channels: Tuple[int, ...]
    final_channels: int
    downsample_times: int = 0
    skip_expansion: int = 3

    def __post_init__(self):
        object.__setattr__(self, "channels", _int_tuple("channels", self.channels))
        object.__setattr__(self, "head_channels", _int_tuple("head_channels", self.head_channels))
        if len(self.head_channels) != len(self.channels):
            raise ValueError(f"head_channels has {len(self.head_channels)} entries but channels has "
                             f"{len(self.channels)}; they must match")
        _checks.positive_int("expansion", self.expansion)
        _checks.in_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        if not isinstance(self.weight_norm, bool):
            raise TypeError(f"weight_norm must be a bool, got {type(self.weight_norm).__name__}")
        _checks.positive_int("final_channels", self.final_channels)
        _checks.positive_int("downsample_times", self.downsample_times, allow_zero=True)
        _checks.positive_int("skip_expansion", self.skip_expansion)

    @property
    def num_scales(self) -> int:
        return len(self.channels)


# Presets (docs/architectures.md §6, §7; the MNIST conv model is this package's choice, §9:
# the paper gives no code or count for it, only the scales 8x28x28 and 16x14x14 of the v1 script).
SIZE_PRESETS: Dict[str, Union[DenseSizes, MDEQSizes]] = {
    "mnist-dense": DenseSizes(width=128),
    "mnist-conv": MDEQSizes(channels=(8, 16), expansion=5, dropout=0.0, weight_norm=False,
                            head_channels=(4, 8), final_channels=64),
    "cifar10-small": MDEQSizes(channels=(24, 24), expansion=5, dropout=0.2, weight_norm=False,
                               head_channels=(8, 16), final_channels=200),
    "cifar10-large": MDEQSizes(channels=(32, 64, 128, 256), expansion=4, dropout=0.3, weight_norm=True,
                               head_channels=(14, 28, 56, 112), final_channels=1680),
}
DEFAULT_INPUT_SHAPES: Dict[str, Tuple[int, ...]] = {
    "mnist-dense": (784,),
    "mnist-conv": (1, 28, 28),
    "cifar10-small": (3, 32, 32),
    "cifar10-large": (3, 32, 32),
}


@dataclass(frozen=True)
class ModelConfig:
    """Full description of a paper model.

    Args:
        architecture: one of ``"mnist-dense"``, ``"mnist-conv"``, ``"cifar10-small"``,
            ``"cifar10-large"``.
        variant: ``"vanilla"`` (z0 = 0), ``"skip"`` (z0 = g(x)), ``"skip_reg"`` (z0 = f(0, x))
            or ``"node"`` (the Neural ODE baseline on ``[0, t1]``).
        continuous: DEQ variants: an ODE method integrated to steady state (True) or a root
            finder (False). The Neural ODE ignores it.
        num_classes: classifier outputs.
        input_shape: per-sample input shape; ``(features,)`` or ``(C, H, W)`` for the dense
            model (flattened), ``(C, H, W)`` for the multiscale ones.
        sizes: :class:`DenseSizes` / :class:`MDEQSizes` (default: the architecture's preset).
        solver: DEQ: a discrete solver or an ODE method matching ``continuous``; Neural ODE:
            the ODE method. Default: the paper's (:mod:`pycdeq.models.defaults`).
        adjoint: DEQ: ``GMRES`` / ``FixedPointAdjoint`` / ``JFB`` / ``Unrolled`` (default: the
            paper's GMRES settings); Neural ODE: ``"backprop"`` (default), ``"backsolve"``,
            ``"interpolating"`` or a :mod:`pycdeq.solvers.ode_adjoint` option.
        output: ``"iterate"`` (the solver's state, default) or ``"f_of_iterate"`` (one more
            ``f`` application, as the paper-era code returned).
        input_gradient, on_nonconvergence, jacobian_reg: DEQ layer options (see
            :class:`pycdeq.layers.deq.DEQ`); Neural ODE: ``input_gradient`` applies (see
            :class:`pycdeq.layers.neural_ode.NeuralODE`), the other two stay at their defaults.
        t1, rhs: Neural ODE options (see :class:`pycdeq.layers.neural_ode.NeuralODE`); DEQ
            variants: must stay at their defaults.
    """

    architecture: str
    variant: str = "vanilla"
    continuous: bool = True
    num_classes: int = 10
    input_shape: Optional[Tuple[int, ...]] = None
    sizes: Union[DenseSizes, MDEQSizes, None] = None
    solver: Any = None
    adjoint: Any = None
    output: str = "iterate"
    input_gradient: str = "implicit"
    on_nonconvergence: str = "warn"
    jacobian_reg: Optional[JacobianRegularization] = None
    t1: float = 1.0
    rhs: str = "f_minus_z"

    def __post_init__(self):
        _checks.one_of("architecture", self.architecture, ARCHITECTURES)
        _checks.one_of("variant", self.variant, VARIANTS)
        if not isinstance(self.continuous, bool):
            raise TypeError(f"continuous must be a bool, got {type(self.continuous).__name__}")
        _checks.positive_int("num_classes", self.num_classes)
        self._resolve_sizes()
        self._resolve_input_shape()
        _checks.one_of("output", self.output, OUTPUTS)
        self._resolve_solver()
        self._check_variant_options()

    # --- resolution and validation, one concern each -------------------------------------
    def _resolve_sizes(self) -> None:
        preset = SIZE_PRESETS[self.architecture]
        sizes = preset if self.sizes is None else self.sizes
        if type(sizes) is not type(preset):
            raise TypeError(f"sizes for {self.architecture!r} must be a {type(preset).__name__}, "
                            f"got {type(sizes).__name__}")
        object.__setattr__(self, "sizes", sizes)

    def _resolve_input_shape(self) -> None:
        shape = DEFAULT_INPUT_SHAPES[self.architecture] if self.input_shape is None else self.input_shape
        shape = _int_tuple("input_shape", shape)
        object.__setattr__(self, "input_shape", shape)
        if self.is_dense:
            return
        if len(shape) != 3:
            raise ValueError(f"input_shape of {self.architecture!r} must be (channels, height, width), got {shape}")
        # Each scale halves the resolution; nearest upsampling must land on the finer size.
        sizes = self.mdeq_sizes
        factor = 2 ** (sizes.downsample_times + sizes.num_scales - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(f"input_shape {shape}: height and width must be divisible by {factor} "
                             f"(2**(downsample_times + num_scales - 1)) for {self.architecture!r}")

    def _resolve_solver(self) -> None:
        node = self.variant == "node"
        solver = self.solver
        if solver is None:
            solver = (defaults.node_method(self.architecture) if node
                      else defaults.solver(self.architecture, continuous=self.continuous))
        if not isinstance(solver, Solver):
            raise TypeError(f"solver must be a pycdeq solver or ODE method, got {type(solver).__name__}")
        if node and not isinstance(solver, ODEMethod):
            raise ValueError(f"variant 'node' needs an ODE method as solver, got {type(solver).__name__}")
        if not node and not isinstance(solver, ODEMethod if self.continuous else DiscreteSolver):
            want = "an ODE method (e.g. Tsit5)" if self.continuous else "a discrete solver (e.g. Broyden)"
            raise ValueError(f"continuous={self.continuous} needs {want} as solver, got {type(solver).__name__}")
        object.__setattr__(self, "solver", solver)

        adjoint = self.adjoint
        if node:
            adjoint = "backprop" if adjoint is None else adjoint
        else:
            adjoint = defaults.adjoint(self.architecture) if adjoint is None else adjoint
        object.__setattr__(self, "adjoint", adjoint)

    def _check_variant_options(self) -> None:
        # The layers own their options' rules: validate by the same functions they call.
        if self.variant == "node":
            inapplicable: Dict[str, object] = {"on_nonconvergence": "warn", "jacobian_reg": None}
            check_node_options(t1=self.t1, rhs=self.rhs, adjoint=self.adjoint, input_gradient=self.input_gradient)
        else:
            inapplicable = {"t1": 1.0, "rhs": "f_minus_z"}
            check_layer_options(adjoint=self.adjoint, jacobian_reg=self.jacobian_reg,
                                on_nonconvergence=self.on_nonconvergence, input_gradient=self.input_gradient)
        for name, default in inapplicable.items():
            if getattr(self, name) != default:
                kind = "the Neural ODE (variant 'node')" if self.variant == "node" else "DEQ variants"
                raise ValueError(f"option {name}={getattr(self, name)!r} does not apply to {kind}; "
                                 f"leave it at its default {default!r}")

    # --- derived quantities ---------------------------------------------------------------
    # The typed views below read the fields that __post_init__ resolved: ``sizes`` and
    # ``input_shape`` are never None on a constructed config.
    @property
    def is_dense(self) -> bool:
        return isinstance(self.sizes, DenseSizes)

    @property
    def dense_sizes(self) -> DenseSizes:
        """``sizes`` of the dense architecture (``AttributeError`` for a multiscale one)."""
        if not isinstance(self.sizes, DenseSizes):
            raise AttributeError(f"{self.architecture!r} is multiscale; its sizes are MDEQSizes")
        return self.sizes

    @property
    def mdeq_sizes(self) -> MDEQSizes:
        """``sizes`` of a multiscale architecture (``AttributeError`` for the dense one)."""
        if not isinstance(self.sizes, MDEQSizes):
            raise AttributeError(f"{self.architecture!r} is not multiscale; its sizes are DenseSizes")
        return self.sizes

    @property
    def resolved_input_shape(self) -> Tuple[int, ...]:
        """``input_shape`` as resolved at construction (the architecture's default for ``None``)."""
        assert self.input_shape is not None, "input_shape is resolved in __post_init__"
        return self.input_shape

    @property
    def in_features(self) -> int:
        """Flattened input size (the dense model's first layer)."""
        return math.prod(self.resolved_input_shape)

    @property
    def scales(self) -> Tuple[Tuple[int, int, int], ...]:
        """Per-scale state shapes ``(C_i, H / 2**(dt + i - 1), W / 2**(dt + i - 1))`` (MDEQ only)."""
        if self.is_dense:
            raise AttributeError(f"{self.architecture!r} has a single-scale state of width "
                                 f"{self.dense_sizes.width}")
        _, height, width = self.resolved_input_shape
        sizes = self.mdeq_sizes
        base = 2 ** sizes.downsample_times
        return tuple((c, height // (base * 2 ** i), width // (base * 2 ** i))
                     for i, c in enumerate(sizes.channels))

    def layer_options(self) -> dict:
        """Keyword arguments for the equilibrium layer (DEQ family or NeuralODE)."""
        if self.variant == "node":
            return {"t1": self.t1, "rhs": self.rhs, "adjoint": self.adjoint, "input_gradient": self.input_gradient,
                    "output": "state" if self.output == "iterate" else "f_of_state"}
        return {"adjoint": self.adjoint, "output": self.output, "input_gradient": self.input_gradient,
                "on_nonconvergence": self.on_nonconvergence, "jacobian_reg": self.jacobian_reg}

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (re-validated). The solver and adjoint are kept:
        when changing ``continuous`` or ``variant``, pass ``solver=None, adjoint=None`` to get
        the paper's defaults for the new setting."""
        return dataclasses.replace(self, **changes)


LAYER_OPTION_NAMES = ("output", "input_gradient", "on_nonconvergence", "jacobian_reg", "t1", "rhs")


def make_config(architecture: str, *, variant: str = "vanilla", continuous: bool = True,
                num_classes: int = 10, input_shape=None, solver=None, adjoint=None, **options) -> ModelConfig:
    """A :class:`ModelConfig` from flat keyword options.

    ``options`` may hold the layer options (``output``, ``input_gradient``,
    ``on_nonconvergence``, ``jacobian_reg``, ``t1``, ``rhs``) and any field of the
    architecture's sizes (``width``; or ``channels``, ``expansion``, ``dropout``, ...), which
    override the preset. Any other name raises ``TypeError`` naming it.
    """
    _checks.one_of("architecture", architecture, ARCHITECTURES)
    preset = SIZE_PRESETS[architecture]
    size_names = tuple(f.name for f in dataclasses.fields(preset))
    unknown = sorted(set(options) - set(size_names) - set(LAYER_OPTION_NAMES))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for {architecture!r}; "
                        f"valid: {', '.join(size_names + LAYER_OPTION_NAMES)}")
    size_changes = {k: v for k, v in options.items() if k in size_names}
    layer_options = {k: v for k, v in options.items() if k in LAYER_OPTION_NAMES}
    sizes = dataclasses.replace(preset, **size_changes) if size_changes else preset
    return ModelConfig(architecture=architecture, variant=variant, continuous=continuous,
                       num_classes=num_classes, input_shape=input_shape, sizes=sizes, solver=solver,
                       adjoint=adjoint, **layer_options)


def model_config(architecture: Optional[str], config: Optional[ModelConfig], options: dict) -> ModelConfig:
    """The config a model class is built from: ``config`` itself, or one made by
    :func:`make_config` from keyword ``options`` (not both). ``architecture``: the one the
    class builds (``None``: any multiscale one, named in ``options`` or ``config``)."""
    if config is None:
        options = dict(options)
        name = options.pop("architecture", architecture)
        if name is None:
            raise TypeError("give the architecture (or a config) for a generic MDEQClassifier")
        if architecture is not None and name != architecture:
            raise ValueError(f"this model class builds {architecture!r}, not {name!r}")
        return make_config(name, **options)
    if options:
        raise TypeError(f"pass either config or keyword options, not both; got config and "
                        f"{', '.join(map(repr, sorted(options)))}")
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if architecture is not None and config.architecture != architecture:
        raise ValueError(f"this model class builds {architecture!r}; the config has {config.architecture!r}")
    return config
