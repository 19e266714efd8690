"""Per-sample bookkeeping: StatePacker (flat view of tensor / tuple states), SampleTracker
(status priority, iterations, best iterate) and write_slot (in place unless autograd needs
the old buffer)."""

from __future__ import annotations

import pytest
import torch

from pycdeq import Status, Termination
from pycdeq.solvers.history import write_slot
from pycdeq.solvers.packing import StatePacker
from pycdeq.solvers.tracker import SampleTracker


def test_packer_round_trips_an_image_state_without_copy():
    z = torch.randn(3, 2, 4, 5)
    packer = StatePacker(z)
    flat = packer.pack(z)
    assert flat.shape == (3, 40) and packer.dim == 40 and packer.batch == 3
    back = packer.unpack(flat)
    assert back.shape == z.shape and torch.equal(back, z)
    assert back.data_ptr() == z.data_ptr()


def test_packer_round_trips_a_tuple_state_in_order():
    z = (torch.randn(2, 3), torch.randn(2, 2, 2), torch.randn(2, 1, 1, 1))
    packer = StatePacker(z)
    assert packer.is_tuple and packer.sizes == (3, 4, 1) and packer.dim == 8
    flat = packer.pack(z)
    assert torch.equal(flat[:, :3], z[0]) and torch.equal(flat[:, 3:7], z[1].reshape(2, 4))
    back = packer.unpack(flat)
    assert isinstance(back, tuple) and all(torch.equal(a, b) for a, b in zip(back, z))


def test_packer_accepts_a_list_state_as_a_tuple():
    packer = StatePacker([torch.zeros(2, 3), torch.zeros(2, 1)])
    assert packer.is_tuple and packer.dim == 4


@pytest.mark.parametrize("bad,error,match", [
    (torch.zeros(3, 2, dtype=torch.long), TypeError, "floating"),
    (torch.tensor(1.0), ValueError, "batch"),
    (torch.zeros(0, 3), ValueError, "batch"),
    ("zeros", TypeError, "tensor"),
    ((), TypeError, "tensor"),
    ((torch.zeros(2, 3), torch.zeros(3, 3)), ValueError, "batch size"),
    ((torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)), ValueError, "dtype"),
    ((torch.zeros(2, 3), "x"), TypeError, "tensor"),
])
def test_packer_rejects_bad_states_naming_them(bad, error, match):
    with pytest.raises(error, match=match) as info:
        StatePacker(bad, "z0")
    assert "z0" in str(info.value)


def test_check_output_names_both_shapes():
    packer = StatePacker(torch.zeros(4, 3))
    with pytest.raises(ValueError) as info:
        packer.check_output(torch.zeros(4, 5))
    message = str(info.value)
    assert "(4, 5)" in message and "(4, 3)" in message and "z0" in message


def test_check_output_names_both_dtypes():
    packer = StatePacker(torch.zeros(4, 3))
    with pytest.raises(ValueError) as info:
        packer.check_output(torch.zeros(4, 3, dtype=torch.float64))
    assert "float64" in str(info.value) and "float32" in str(info.value)


def test_check_output_rejects_structure_mismatch_of_tuples():
    packer = StatePacker((torch.zeros(2, 3), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        packer.check_output(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="tuple"):
        packer.check_output((torch.zeros(2, 3),))
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        packer.check_output((torch.zeros(2, 3), torch.zeros(2, 5)))
    packer.check_output([torch.zeros(2, 3), torch.zeros(2, 4)])  # a list is fine
    single = StatePacker(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        single.check_output((torch.zeros(2, 3),))
    with pytest.raises(ValueError, match="NoneType"):
        single.check_output(None)


def tracker(batch=4, **kw):
    return SampleTracker(Termination(abstol=1e-3, **kw), torch.zeros(batch, 2))


def test_tracker_freezes_status_and_iterations_once_stopped():
    t = tracker()
    z = torch.zeros(4, 2)
    fz = torch.tensor([[1e-4, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    t.observe(0, z, fz)
    assert t.status.tolist() == [Status.CONVERGED, Status.RUNNING, Status.RUNNING, Status.RUNNING]
    fz2 = torch.tensor([[5.0, 0.0], [1e-4, 0.0], [2.0, 0.0], [3.0, 0.0]])
    t.observe(1, z, fz2)
    # Sample 0 stays converged with its old residual and iteration although its new one is bad.
    assert t.status.tolist()[:2] == [Status.CONVERGED, Status.CONVERGED]
    assert t.iterations.tolist() == [0, 1, 1, 1]
    assert t.residual[0].item() == pytest.approx(1e-4)
    assert t.active.tolist() == [False, False, True, True]
    z_final, residual, status = t.finish(z, budget=7)
    assert status.tolist() == [Status.CONVERGED, Status.CONVERGED, Status.MAX_ITERS, Status.MAX_ITERS]
    assert t.iterations.tolist() == [0, 1, 7, 7]


def test_tracker_non_finite_takes_priority_over_a_passing_test():
    t = tracker(batch=3, safe=True, divergence_factor=2.0)
    z = torch.zeros(3, 2)
    t.observe(0, z, torch.ones(3, 2))
    t.observe(1, z, torch.tensor([[float("nan"), 0.0], [10.0, 0.0], [float("inf"), 0.0]]))
    assert t.status.tolist() == [Status.NON_FINITE, Status.DIVERGED, Status.NON_FINITE]


def test_tracker_returns_best_finite_iterate_for_non_finite_samples():
    t = tracker(batch=2)
    z1, z2 = torch.full((2, 2), 1.0), torch.full((2, 2), 2.0)
    t.observe(0, z1, z1 + 0.5)
    t.observe(1, z2, torch.tensor([[float("nan"), 0.0], [2.1, 2.0]]))
    z, residual, status = t.finish(z2, budget=1)
    assert status.tolist() == [Status.NON_FINITE, Status.MAX_ITERS]
    assert torch.equal(z[0], z1[0]) and residual[0].item() == pytest.approx(0.5 * 2 ** 0.5)
    assert torch.equal(z[1], z2[1])  # best=False: the last iterate of a finite sample


def test_write_slot_is_in_place_without_autograd_and_copies_under_it():
    buffer = torch.zeros(2, 3, 4)
    same = write_slot(buffer, 1, torch.ones(2, 4))
    assert same is buffer and buffer[:, 1].eq(1).all()
    partial = write_slot(buffer, 2, torch.full((2, 2), 5.0), columns=2)
    assert partial is buffer and buffer[:, 2, :2].eq(5).all() and buffer[:, 2, 2:].eq(0).all()

    value = torch.ones(2, 4, requires_grad=True)
    saved = torch.zeros(2, 3, 4)
    new = write_slot(saved, 0, value * 2)
    assert new is not saved and saved.eq(0).all()
    new.sum().backward()
    assert torch.equal(value.grad, torch.full((2, 4), 2.0))
    with torch.no_grad():
        assert write_slot(saved, 0, value) is saved
