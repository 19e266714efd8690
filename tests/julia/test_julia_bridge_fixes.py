"""The bridge fixes found by reading DeepEquilibriumNetworks.jl, Lux, SciMLSensitivity and
NLsolve, checked on the parse tree (tree-sitter-julia; no Julia needed). Running them is
``test_julia_parity.py``'s job where Julia exists; docs/julia.md says which source file at
which version each fix was read against.
"""

import pytest

tree = pytest.importorskip("_julia_tree")
_ = pytest.importorskip("tree_sitter_julia")


def _all_code() -> str:
    return " ".join(tree.code_text(tree.parse(path).root_node) for path in tree.SOURCES)


def test_the_reference_unrolled_mode_is_never_switched_on():
    """DEQ.jl's `fixed_depth` state selects Lux's RepeatedLayer, which feeds (z0, x) to every
    repeat; the bridge must never set it (nor build a RepeatedLayer itself)."""
    code = _all_code()
    assert "update_state" not in code and "RepeatedLayer" not in code


def test_unrolled_deq_feeds_the_running_state_back_into_f():
    definition = tree.function("unrolled_deq")
    loops = [n for n in tree.walk(definition) if n.type == "for_statement"]
    assert len(loops) == 1
    loop = loops[0]
    assert tree.code_text(loop.named_children[0]).replace(" ", "") == "_in1:depth"
    (call,) = [c for c in tree.calls(loop, "LuxCore.apply")
               if tree.arguments(c)[0].text == b"deq.model"]
    state_in = tree.arguments(call)[1]
    assert state_in.type == "tuple_expression"
    assignment = call.parent
    assert assignment.type == "assignment"
    state_out = assignment.named_children[0].named_children[0]
    # f's output is the next call's input: z <- f(z, x), not f(z0, x) every time.
    assert state_out.text == state_in.named_children[0].text == b"z"


def test_unrolled_solution_reports_z0_and_depth_as_nfe():
    (call,) = tree.calls(tree.function("unrolled_deq"), "DeepEquilibriumSolution")
    z_star, u0, _, _, nfe, _ = (a.text.decode() for a in tree.arguments(call))
    assert (z_star, u0, nfe) == ("z", "z0", "depth")


def test_every_pass_decides_between_solving_and_unrolling():
    for name in ("forward", "value_and_gradient", "objective"):
        for call in tree.calls(tree.function(name), "apply_parts"):
            assert len(tree.arguments(call)) == 5, (name, call.text)
    body = tree.code_text(tree.function("apply_parts"))
    assert "if depth > 0" in body and "unrolled_deq (" in body


def test_steady_state_adjoint_gets_gmres_with_the_restart_explicitly():
    definition = tree.function("make_sensealg")
    (gmres,) = tree.calls(definition, "KrylovJL_GMRES")
    assert "gmres_restart = Int ( restart )" in tree.code_text(gmres)
    (adjoint,) = tree.calls(definition, "SteadyStateAdjoint")
    assert "linsolve ," in tree.code_text(adjoint)
    assert "linsolve = nothing" not in _all_code()


def test_training_keeps_the_state_without_the_solve_record():
    step = tree.function("train_step!")
    stores = [n for n in tree.walk(step) if n.type == "assignment"
              and n.named_children[0].text == b"s.st"]
    assert [tree.code_text(n.named_children[-1]) for n in stores] == ["without_solution ( st_new )"]
    assert "solution = DeepEquilibriumSolution ( )" in tree.code_text(tree.function("without_solution"))


def test_to_gpu_checks_the_solver_before_moving_anything():
    body = [n for n in tree.function("to_gpu!").named_children if n.type != "signature"]
    assert tree.code_text(body[0]) == "check_gpu_solver ( s )"
    assert '"anderson"' in tree.function("check_gpu_solver").text.decode()
