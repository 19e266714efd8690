"""The MDEQ building blocks compute exactly what docs/architectures.md §4 writes down."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pycdeq.models import blocks


def _bn(x):
    """Batch-statistics BatchNorm with unit scale and zero shift (the blocks' init)."""
    return F.batch_norm(x, None, None, training=True, eps=1e-5)


def test_residual_block_adds_conv2_output_and_normalises_after_relu():
    block = blocks.ResidualBlock(3, 3, expansion=2)
    z, injection = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    h = F.conv2d(torch.relu(_bn(F.conv2d(z, block.conv1.weight, padding=1))), block.conv2.weight, padding=1)
    expected = _bn(torch.relu(_bn(h + injection) + h))  # residual h (v0.2.6), not z
    torch.testing.assert_close(block(z, injection), expected)
    expected_no_injection = _bn(torch.relu(_bn(h) + h))
    torch.testing.assert_close(block(z), expected_no_injection)


def test_batch_norm_uses_batch_statistics_in_eval_mode_too():
    norm = blocks.batch_norm(3).eval()
    x = torch.randn(4, 3, 2, 2) * 5 + 2
    torch.testing.assert_close(norm(x), _bn(x))
    assert not list(norm.buffers())
    tracked = blocks.tracked_batch_norm(3)
    assert {name for name, _ in tracked.named_buffers()} >= {"running_mean", "running_var"}


@pytest.mark.parametrize("c_in, c_out, steps, expected", [
    (32, 256, 3, [(32, 64), (64, 128), (128, 256)]),  # doubling schedule
    (24, 24, 2, [(24, 24), (24, 24)]),                 # otherwise C_in until the last step
    (8, 40, 2, [(8, 8), (8, 40)]),
])
def test_downsample_channel_schedule(c_in, c_out, steps, expected):
    module = blocks.downsample_module(c_in, c_out, steps)
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == expected
    assert all(c.stride == (2, 2) and c.kernel_size == (3, 3) and c.bias is None for c in convs)
    out = module(torch.randn(2, c_in, 16, 16))
    assert out.shape == (2, c_out, 16 // 2 ** steps, 16 // 2 ** steps)
    assert isinstance(module[-1][-1], torch.nn.ReLU)  # a ReLU after the last step too


def test_upsample_is_3x3_conv_bn_relu_then_nearest():
    module = blocks.upsample_module(6, 3, 2)
    x = torch.randn(2, 6, 2, 2)
    coarse = torch.relu(_bn(F.conv2d(x, module[0].weight, padding=1)))
    expected = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    torch.testing.assert_close(module(x), expected)


def test_post_fuse_is_bn_of_relu_of_1x1_conv():
    module = blocks.post_fuse(4)
    s = torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(module(s), _bn(torch.relu(F.conv2d(s, module[0].weight))))


def test_conv_init_and_weight_norm_start_at_v():
    torch.manual_seed(1)
    layer = blocks.conv(64, 64, 3)
    assert abs(float(layer.weight.detach().std()) - 0.01) < 5e-4 and layer.bias is None
    normed = blocks.conv(8, 5, 3, weight_norm=True)
    g = normed.parametrizations.weight.original0
    v = normed.parametrizations.weight.original1
    torch.testing.assert_close(normed.weight, v)  # g = ||v|| per output channel at init
    torch.testing.assert_close(g.flatten(), v.flatten(1).norm(dim=1))


def test_variational_dropout_mask_is_fixed_until_reset():
    drop = blocks.VariationalDropout(0.25)
    h = torch.ones(64, 8, 4, 4)
    first, again = drop(h), drop(h)
    torch.testing.assert_close(first, again)  # same map for every f call of a step
    values = first.unique()
    assert len(values) == 2 and values[0] == 0  # element-wise mask, kept values rescaled
    torch.testing.assert_close(values[1], torch.tensor(1 / 0.75))
    assert abs(float((first == 0).float().mean()) - 0.25) < 0.02
    drop.reset_mask()
    assert not torch.equal(drop(h), first)
    drop.eval()
    assert torch.equal(drop(h), h)


def test_skip_predictor_branches_map_x_to_every_scale():
    branches = blocks.skip_predictor_branches((4, 8, 16), weight_norm=True)
    assert branches[0].conv1.out_channels == 12  # expansion 3, the reference's default
    x = torch.randn(2, 4, 8, 8)
    assert [tuple(b(x).shape) for b in branches] == [(2, 4, 8, 8), (2, 8, 4, 4), (2, 16, 2, 2)]


def test_head_fuses_scales_fine_to_coarse():
    head = blocks.ClassificationHead((4, 8), (2, 3), final_channels=10, num_classes=7)
    z = (torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4))
    assert head(z).shape == (2, 7)
    # The bottleneck outputs are 4h wide; the fuse conv goes 8 -> 12 with stride 2 and a bias.
    down = head.downsamples[0][0]
    assert (down.in_channels, down.out_channels, down.stride, down.bias is not None) == (8, 12, (2, 2), True)
    torch.testing.assert_close(head.classifier.bias, torch.zeros(7))
