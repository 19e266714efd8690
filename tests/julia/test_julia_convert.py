"""Layout conversions torch <-> Lux: exact round trips, the conv convention, transfer checks."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pycdeq.julia import convert

sizes = st.integers(1, 5)


@settings(max_examples=40, deadline=None)
@given(out=sizes, inp=sizes, seed=st.integers(0, 2**16))
def test_linear_weight_round_trips_exactly(out, inp, seed):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))
    plan = convert.plan_linear_weight(w.shape)
    lux = convert.to_lux(w, plan)
    assert lux.shape == (out, inp)
    # Julia's memory for a Dense weight is column-major: W[:, 1], W[:, 2], ...
    assert np.array_equal(convert.julia_memory(lux), w.numpy().T.ravel())
    back = convert.from_lux(convert.from_julia_memory(convert.julia_memory(lux), plan.lux_shape), plan)
    assert np.array_equal(back, w.numpy())


@settings(max_examples=40, deadline=None)
@given(o=sizes, i=sizes, kh=sizes, kw=sizes, cross=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_weight_round_trips_exactly(o, i, kh, kw, cross, seed):
    w = torch.randn(o, i, kh, kw, generator=torch.Generator().manual_seed(seed))
    plan = convert.plan_conv_weight(w.shape, cross_correlation=cross)
    lux = convert.to_lux(w, plan)
    assert lux.shape == (kw, kh, i, o)
    flat = convert.julia_memory(lux)
    back = convert.from_lux(convert.from_julia_memory(flat, plan.lux_shape), plan)
    assert np.array_equal(back, w.numpy())
    expected = w.numpy()[..., ::-1, ::-1] if not cross else w.numpy()
    assert lux[kw - 1, 0, 0, 0] == expected[0, 0, 0, kw - 1]


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(sizes, min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_activations_round_trip_and_reverse_dims(shape, seed):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    plan = convert.plan_activation(x.shape)
    lux = convert.to_lux(x, plan)
    assert lux.shape == tuple(reversed(shape))
    assert np.array_equal(convert.from_lux(lux, plan), x.numpy())
    assert plan.view and np.shares_memory(lux, x.numpy())


def test_nchw_to_whcn_is_a_zero_copy_column_major_view():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # N, C, H, W
    whcn = convert.reverse_dims(x.numpy())
    assert whcn.shape == (5, 4, 3, 2) and whcn.flags.f_contiguous
    assert np.shares_memory(whcn, x.numpy())
    n, c, h, w = 1, 2, 3, 4
    assert whcn[w, h, c, n] == x[n, c, h, w]
    assert torch.equal(convert.reverse_dims(convert.reverse_dims(x)), x)


def _crosscor_whcn(x, k, stride, pad):
    """NNlib's cross-correlation on WHCN arrays with a (kW, kH, I, O) kernel (reference)."""
    x = np.pad(x, ((pad[0], pad[0]), (pad[1], pad[1]), (0, 0), (0, 0)))
    kw, kh, _, o = k.shape
    out_w = (x.shape[0] - kw) // stride[0] + 1
    out_h = (x.shape[1] - kh) // stride[1] + 1
    y = np.zeros((out_w, out_h, o, x.shape[3]))
    for a in range(out_w):
        for b in range(out_h):
            patch = x[a * stride[0]:a * stride[0] + kw, b * stride[1]:b * stride[1] + kh]
            y[a, b] = np.einsum("ijcn,ijco->on", patch, k)
    return y


@pytest.mark.parametrize("cross_correlation", [True, False])
def test_converted_conv_reproduces_torch_on_rectangular_inputs(cross_correlation):
    """Reversed dims + the right flip give torch's Conv2d in Lux's (W, H, C, N) world: the
    spatial axes (kH != kW, H != W, stride and padding per axis) are not swapped."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), bias=False).double()
    x = torch.randn(2, 2, 5, 7, dtype=torch.float64)
    expected = conv(x).detach().numpy()
    options = convert.conv_options_to_lux(conv)
    assert options["kernel"] == (3, 2) and options["stride"] == (2, 1) and options["pad"] == (0, 1)
    plan = convert.plan_conv_weight(conv.weight.shape, cross_correlation=cross_correlation)
    kernel = convert.to_lux(conv.weight, plan)
    # Lux's default Conv (cross_correlation=false) is a true convolution: NNlib flips the
    # kernel, so a pre-flipped kernel ends up as torch's cross-correlation again.
    effective = kernel if cross_correlation else kernel[::-1, ::-1]
    y = _crosscor_whcn(convert.reverse_dims(x.numpy()), effective, options["stride"], options["pad"])
    assert np.allclose(convert.reverse_dims(y), expected, atol=1e-12)


def test_conv_options_reject_what_lux_cannot_express():
    with pytest.raises(ValueError, match="padding"):
        convert.conv_options_to_lux(nn.Conv2d(1, 1, 3, padding="same"))
    with pytest.raises(ValueError, match="padding"):
        convert.conv_options_to_lux(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match="Conv2d"):
        convert.conv_options_to_lux(nn.Linear(2, 2))


def test_batchnorm_round_trips_exactly():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.2)
    bn.train()
    bn(torch.randn(8, 4, 3, 3))  # non-trivial running statistics
    with torch.no_grad():
        bn.weight.uniform_(), bn.bias.uniform_()
    lux = convert.batchnorm_to_lux(bn)
    assert set(lux["params"]) == {"scale", "bias"} and set(lux["states"]) == {"running_mean", "running_var"}
    assert lux["options"] == {"chs": 4, "epsilon": 1e-3, "momentum": 0.2, "affine": True, "track_stats": True}
    back = convert.batchnorm_from_lux(lux)
    state = bn.state_dict()
    for name, value in back.items():
        assert torch.equal(value, state[name]), name
    assert set(back) == set(state) - {"num_batches_tracked"}


def test_batchnorm_without_affine_or_statistics_and_cumulative_momentum():
    lux = convert.batchnorm_to_lux(nn.BatchNorm1d(3, affine=False, track_running_stats=False))
    assert lux["params"] == {} and lux["states"] == {}
    with pytest.raises(ValueError, match="momentum=None"):
        convert.batchnorm_to_lux(nn.BatchNorm1d(3, momentum=None))


def test_layout_plans_validate_shapes():
    with pytest.raises(ValueError, match="2-d"):
        convert.plan_linear_weight((3,))
    with pytest.raises(ValueError, match="4-d"):
        convert.plan_conv_weight((3, 3, 3))
    plan = convert.plan_linear_weight((2, 3))
    with pytest.raises(ValueError, match="shape"):
        convert.to_lux(np.zeros((3, 2)), plan)
    with pytest.raises(TypeError, match="numpy.ndarray or torch.Tensor"):
        convert.to_lux([[1.0]], convert.plan_linear_weight((1, 1)))


# --- tensors crossing into Julia ---------------------------------------------------------


def test_cpu_tensor_crosses_as_a_zero_copy_column_major_view():
    x = torch.randn(4, 6)
    plan = convert.plan_transfer("x", x)
    assert plan.route == "numpy" and not plan.copy and not plan.synchronize
    assert plan.julia_shape == (6, 4)
    view = convert.to_julia(x, plan)
    assert view.shape == (6, 4) and view.flags.f_contiguous and np.shares_memory(view, x.numpy())


def test_non_contiguous_tensor_is_copied_before_crossing():
    x = torch.randn(6, 4).t()
    plan = convert.plan_transfer("x", x)
    assert plan.copy
    view = convert.to_julia(x, plan)
    assert view.flags.f_contiguous and np.array_equal(view.T, x.numpy())


def test_tensor_that_requires_grad_crosses_detached():
    x = torch.randn(3, 2, requires_grad=True)
    view = convert.to_julia(x, convert.plan_transfer("x", x))
    assert np.array_equal(view.T, x.detach().numpy())


def test_julia_result_comes_back_zero_copy_in_torch_layout():
    julia_array = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))  # (classes, batch)
    t = convert.from_julia(julia_array, device=torch.device("cpu"))
    assert t.shape == (4, 3) and t.is_contiguous()
    assert np.shares_memory(t.numpy(), julia_array) and t[1, 2] == julia_array[2, 1]


@pytest.mark.parametrize("tensor, error, match", [
    (torch.zeros(2, 3, dtype=torch.float64), TypeError, r"\.float\(\)"),
    (torch.zeros(2, 3, dtype=torch.int64), TypeError, "dtype"),
    (torch.zeros(2, 3, dtype=torch.float16), TypeError, "Float32"),
    (torch.zeros(2, 3).to_sparse(), TypeError, "dense"),
    (torch.zeros(2, 3, device="meta"), ValueError, "CPU or CUDA"),
    (np.zeros((2, 3), np.float32), TypeError, "torch.Tensor"),
])
def test_bad_tensors_are_rejected_with_their_name(tensor, error, match):
    with pytest.raises(error, match=match) as info:
        convert.plan_transfer("the input", tensor)
    assert "the input" in str(info.value)


def test_cuda_results_and_inputs_need_the_bridge():
    with pytest.raises(ValueError, match="bridge"):
        convert.from_julia(np.zeros((2, 2), np.float32), device=torch.device("cuda"))


@pytest.mark.parametrize("labels, error, match", [
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integer"),
    (np.array([True, False, True]), TypeError, "integer"),
    (np.array([0, 1]), ValueError, r"shape \(3,\)"),
    (np.array([0, 1, 5]), ValueError, r"\[0, 5\)"),
    (np.array([-1, 1, 2]), ValueError, r"\[0, 5\)"),
])
def test_bad_labels_are_rejected(labels, error, match):
    with pytest.raises(error, match=match):
        convert.check_labels("labels", labels, 3, 5)


def test_labels_become_contiguous_int64():
    out = convert.check_labels("labels", torch.tensor([4, 0, 2], dtype=torch.int32), 3, 5)
    assert out.dtype == np.int64 and out.flags.c_contiguous and out.tolist() == [4, 0, 2]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_crosses_through_dlpack_contiguous_and_synchronised():
    """What the CUDA route does on the torch side, with torch itself as the DLPack consumer
    (Julia's DLPack.jl takes the same capsule): contiguous first, then zero-copy."""

    class TorchAsJulia:  # from_dlpack/share as DLPack.jl would, with dims reversed
        @staticmethod
        def from_dlpack(t):
            return torch.from_dlpack(t).permute(*reversed(range(t.dim())))

        @staticmethod
        def share(a, consumer):
            return consumer(a.permute(*reversed(range(a.dim()))).contiguous())

    x = torch.randn(8, 5, device="cuda").t()  # non-contiguous on purpose
    plan = convert.plan_transfer("x", x)
    assert plan.route == "dlpack" and plan.copy and plan.synchronize
    wrapped = convert.to_julia(x, plan, TorchAsJulia)
    assert wrapped.shape == (8, 5) and torch.equal(wrapped.t(), x)
    contiguous = x.contiguous()
    shared = torch.from_dlpack(contiguous)
    assert shared.data_ptr() == contiguous.data_ptr()
    back = convert.from_julia(wrapped, device=torch.device("cuda"), bridge=TorchAsJulia,
                              synchronize=torch.cuda.synchronize)
    assert back.is_cuda and torch.equal(back, x)
