"""Unrolled pretraining reaches every model type, the Neural ODE included (as in the reference).

DeepEquilibriumNetworks.jl's CIFAR-10 experiments run their first 3,000 steps at
``fixed_depth = 5`` for every ``model_type``, the Neural ODE too; the trainer must unroll
every equilibrium layer during ``TrainConfig.pretrain_steps`` and solve afterwards.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pycdeq import VCAB3
from pycdeq.layers import DEQ, NeuralODE
from pycdeq.models import VARIANTS, build_model
from pycdeq.training import Trainer, TrainConfig

FEATURES, CLASSES = 10, 3


def _data(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    return x, (x[:, :CLASSES]).argmax(dim=1)


def _model(variant: str) -> nn.Module:
    torch.manual_seed(0)
    solver = VCAB3(rtol=0.01, atol=0.01, max_steps=10)
    return build_model("mnist-dense", variant=variant, num_classes=CLASSES, input_shape=(FEATURES,),
                       solver=solver, width=8)


def _record_depths(model: nn.Module) -> list:
    depths = []
    for layer in model.modules():
        if isinstance(layer, (DEQ, NeuralODE)):
            layer.register_forward_pre_hook(lambda module, args: depths.append(module.fixed_depth))
    return depths


@pytest.mark.parametrize("variant", VARIANTS)
def test_pretraining_unrolls_every_variant_then_solves(variant):
    model = _model(variant)
    depths = _record_depths(model)
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=16, progress=False, pretrain_steps=2,
                                         pretrain_depth=5))
    trainer.fit(_data(48, 0))
    assert depths == [5, 5, 0], variant  # 3 batches: two unrolled, then the solve
    assert all(layer.fixed_depth == 0 for layer in model.modules() if isinstance(layer, (DEQ, NeuralODE)))


def test_neural_ode_pretraining_costs_depth_evaluations():
    model = _model("node")
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=16, progress=False, pretrain_steps=3,
                                         pretrain_depth=5))
    result = trainer.fit(_data(48, 0))
    assert result.history[0].train_nfe == pytest.approx(5.0)
