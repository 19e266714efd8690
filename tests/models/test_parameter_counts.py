"""Parameter counts of the paper's models, per variant and per component.

The expected numbers are those of docs/architectures.md §2, §6, §7 (trainable parameters only;
weight-normalised convs count ``v`` and ``g``; BatchNorm running statistics are buffers).
The large model is built on the ``meta`` device: counting needs no memory and no forward.
"""

from __future__ import annotations

import math

import pytest
import torch

from pycdeq.models import build_model
from pycdeq.models.config import ARCHITECTURES

VARIANTS = ["vanilla", "skip", "skip_reg", "node"]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def running_stat_floats(module) -> int:
    return sum(b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))


PAPER_COUNTS = {
    # (vanilla / skip_reg / node, skip)
    "mnist-dense": (134_538, 151_050),
    "cifar10-small": (163_546, 200_122),
    "cifar10-large": (10_631_958, 11_186_774),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_parameter_count_matches_the_paper(name, variant):
    with torch.device("meta"):
        model = build_model(name, variant=variant)
    plain, skip = PAPER_COUNTS[name]
    assert count(model) == (skip if variant == "skip" else plain)


def test_cifar10_small_components_match_the_layer_table():
    with torch.device("meta"):
        model = build_model("cifar10-small", variant="skip")
    assert count(model.stem) == 5_928
    assert count(model.deq.f) == 116_064
    assert count(model.deq.f.main[0]) == count(model.deq.f.main[1]) == 52_176
    assert count(model.deq.f.mapping[0][1]) == count(model.deq.f.mapping[1][0]) == 5_232
    assert count(model.deq.f.post_fuse) == 2 * 624
    assert count(model.head) == 41_554
    assert count(model.deq.g) == 36_576
    assert running_stat_floats(model) == 480  # only the head bottlenecks track statistics


def test_cifar10_large_components_match_the_layer_table():
    with torch.device("meta"):
        model = build_model("cifar10-large", variant="skip")
    f = model.deq.f
    assert count(model.stem) == 11_296  # includes the 1x1 stage0 (4 scales)
    assert [count(block) for block in f.main] == [74_272, 296_000, 1_181_824, 4_722_944]
    assert [count(f.mapping[0][j]) for j in (1, 2, 3)] == [18_560, 92_544, 387_968]
    assert [count(f.mapping[i][0]) for i in (1, 2, 3)] == [18_496, 36_928, 73_792]
    assert [count(p) for p in f.post_fuse] == [1_120, 4_288, 16_768, 66_304]
    assert count(f) == 8_247_232
    assert count(model.head) == 2_373_430
    assert count(model.deq.g) == 554_816
    assert running_stat_floats(model) == 4_200


def test_weight_norm_adds_one_scale_per_output_channel():
    with torch.device("meta"):
        model = build_model("cifar10-large")
    conv1 = model.deq.f.main[0].conv1
    shapes = sorted(tuple(p.shape) for p in conv1.parameters())
    assert shapes == [(128, 1, 1, 1), (128, 32, 3, 3)]  # g and v of conv 32 -> 128


@pytest.mark.parametrize("input_shape, expected", [((64,), 42_378), ((1, 8, 8), 42_378), ((784,), 134_538)])
def test_dense_input_layer_adapts_to_the_data_size(input_shape, expected):
    model = build_model("mnist-dense", input_shape=input_shape)
    assert model.stem[0].in_features == math.prod(input_shape)
    assert count(model) == expected


def test_node_and_skip_reg_add_no_parameters_to_vanilla():
    for name in ARCHITECTURES:
        with torch.device("meta"):
            counts = {v: count(build_model(name, variant=v)) for v in ("vanilla", "skip_reg", "node")}
        assert len(set(counts.values())) == 1, (name, counts)
