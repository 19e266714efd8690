"""The Julia sources parse (tree-sitter-julia, no Julia needed) and agree with the Python side.

Nothing here runs Julia. The parser proves the files are syntactically valid Julia; the
cross-checks prove that every function and keyword the Python side calls exists in the
Julia sources with that name, and that every package the module loads is a declared
dependency.
"""

import os
import tomllib

import pytest

import pycdeq.julia.backend as backend_module
from pycdeq.julia.translate import translate

tree_sitter = pytest.importorskip("tree_sitter")
tree_sitter_julia = pytest.importorskip("tree_sitter_julia")

from _julia_tree import BRIDGE, SOURCES  # noqa: E402 -- needs tree_sitter (skipped above)
from _julia_tree import parse as _parse  # noqa: E402
from _julia_tree import parser as _parser  # noqa: E402
from _julia_tree import walk as _walk  # noqa: E402


def _problems(tree):
    """Every ERROR or MISSING node, with its position."""
    found, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            found.append(f"{node.type} at line {node.start_point[0] + 1}: {node.text[:60]!r}")
        stack.extend(node.children)
    return found


def _signature_call(node):
    """The call_expression naming a definition (through `where` clauses)."""
    while node is not None and node.type in ("signature", "where_expression", "typed_expression"):
        node = node.named_children[0] if node.named_children else None
    return node if node is not None and node.type == "call_expression" else None


def _parameter_name(node):
    if node.type == "identifier":
        return node.text.decode()
    if node.type in ("typed_expression", "named_argument") and node.named_children:
        return _parameter_name(node.named_children[0])
    return None


def definitions():
    """``{function name: [(positional names, keyword names, accepts **kwargs)]}`` for every
    long-form and short-form function definition in the bridge."""
    out = {}
    for path in SOURCES:
        for node in _walk(_parse(path).root_node):
            if node.type == "function_definition":
                call = _signature_call(node.named_children[0])
            elif node.type == "assignment" and node.named_children and node.named_children[0].type == "call_expression":
                call = node.named_children[0]
            else:
                continue
            if call is None or call.named_children[0].type != "identifier":
                continue
            name = call.named_children[0].text.decode()
            arguments = call.child_by_field_name("arguments") or call.named_children[-1]
            positional, keywords, splat, after_semicolon = [], [], False, False
            for child in arguments.children:
                if child.type == ";":
                    after_semicolon = True
                elif child.type == "splat_expression":
                    splat = splat or after_semicolon
                elif child.is_named:
                    target = keywords if after_semicolon else positional
                    parameter = _parameter_name(child)
                    if parameter is not None:
                        target.append(parameter)
            out.setdefault(name, []).append((positional, keywords, splat))
    return out


@pytest.mark.parametrize("path", SOURCES, ids=os.path.basename)
def test_julia_source_parses_without_error_nodes(path):
    tree = _parse(path)
    assert _problems(tree) == []
    assert not tree.root_node.has_error


def test_parser_check_catches_broken_julia():
    for broken in (b"function f(x)\n  x + \nend\n", b"f(x = 1\n", b"module M\nfunction g()\n"):
        assert _problems(_parser().parse(broken)), broken


def test_module_includes_every_source_file_once():
    tree = _parse(os.path.join(BRIDGE, "src", "PycdeqBridge.jl"))
    included = []
    for node in _walk(tree.root_node):
        if node.type == "call_expression" and node.named_children[0].text == b"include":
            included.append(node.named_children[1].named_children[0].text.decode().strip('"'))
    others = sorted(os.path.basename(p) for p in SOURCES if not p.endswith("PycdeqBridge.jl"))
    assert sorted(included) == others


def test_every_loaded_package_is_a_declared_dependency():
    with open(os.path.join(BRIDGE, "Project.toml"), "rb") as file:
        deps = set(tomllib.load(file)["deps"])
    loaded = set()
    for node in _walk(_parse(os.path.join(BRIDGE, "src", "PycdeqBridge.jl")).root_node):
        if node.type in ("using_statement", "import_statement"):
            for child in node.named_children:
                first = child.named_children[0] if child.type == "selected_import" else child
                loaded.add(first.text.decode().split(".")[0])
    assert loaded == deps


def test_build_model_keywords_match_the_translation():
    from _julia_helpers import tight_model

    (build,) = definitions()["_build"]
    positional, keywords, _ = build
    assert positional == []
    for variant, continuous in (("vanilla", True), ("skip", False), ("node", True)):
        assert set(translate(tight_model(variant, continuous)).julia_kwargs()) == set(keywords)


# Every bridge function the Python side calls, its positional arity and the keywords it passes.
CALLED = {
    "build_model": (0, set()), "layout": (1, set()), "get_params": (1, set()),
    "set_params!": (2, set()), "forward": (2, set()), "value_and_gradient": (3, set()),
    "predict": (2, set()), "train_step!": (3, {"learning_rate", "skip_weight"}),
    "fit!": (3, {"epochs", "batch_size", "learning_rate", "skip_weight", "shuffle", "seed"}),
    "save": (2, {"include_optimiser"}), "load": (1, set()), "to_gpu!": (1, set()),
    "to_cpu!": (1, set()), "from_dlpack": (1, set()), "share": (2, set()),
}


@pytest.mark.parametrize("name", sorted(CALLED))
def test_every_bridge_function_python_calls_is_defined(name):
    arity, keywords = CALLED[name]
    methods = definitions().get(name)
    assert methods, f"PycdeqBridge defines no {name}"
    assert any(len(positional) == arity and (keywords <= set(kw) or splat)
               for positional, kw, splat in methods), methods


def test_python_calls_only_the_listed_bridge_functions():
    """The CALLED table is complete: every `self._bridge.<name>` in backend.py is in it."""
    import re

    with open(backend_module.__file__) as file:
        used = set(re.findall(r"_bridge\.(\w+)\(", file.read()))
    with open(os.path.join(os.path.dirname(backend_module.__file__), "convert.py")) as file:
        used |= set(re.findall(r"bridge\.(\w+)\(", file.read()))
    julia_names = {n[:-2] + "!" if n.endswith("_b") else n for n in used}
    assert julia_names <= set(CALLED), julia_names - set(CALLED)


def _imported_names():
    """Names bound by ``using X: a, b`` / ``import X`` in the module file."""
    names = set()
    for node in _walk(_parse(os.path.join(BRIDGE, "src", "PycdeqBridge.jl")).root_node):
        if node.type in ("using_statement", "import_statement"):
            for child in node.named_children:
                if child.type == "selected_import":
                    names.update(c.text.decode() for c in child.named_children[1:])
                else:
                    names.add(child.text.decode())
    return names


# Base / Core functions and types the bridge calls (a typo would be missing from this list).
BASE = {"ArgumentError", "Array", "DimensionMismatch", "ErrorException", "typeof", "Float32", "Float64",
        "Int", "String", "Val",
        "abs", "append!", "argmax", "axes", "collect", "copyto!", "enumerate", "exp", "first", "get",
        "getproperty", "haskey", "include", "join", "keys", "length", "log", "map", "maximum", "min",
        "ndims", "push!", "reduce", "repr", "reshape", "size", "sqrt", "string", "sum", "throw",
        "vcat", "vec", "view", "zero", "zeros", "eltype"}
LOCAL_CALLABLES = {"Session", "device"}  # the struct's constructor; a device object called on arrays


def test_every_called_name_is_defined_imported_or_from_base():
    known = set(definitions()) | _imported_names() | BASE | LOCAL_CALLABLES
    unknown = set()
    for path in SOURCES:
        for node in _walk(_parse(path).root_node):
            if node.type in ("call_expression", "broadcast_call_expression") and node.named_children:
                head = node.named_children[0]
                if head.type == "identifier" and head.text.decode() not in known:
                    unknown.add(f"{os.path.basename(path)}: {head.text.decode()}")
    assert not unknown, sorted(unknown)


def test_every_imported_name_is_used():
    used = set()
    for path in SOURCES:
        for node in _walk(_parse(path).root_node):
            if node.type == "identifier" and not any(
                    a.type in ("using_statement", "import_statement") for a in _ancestors(node)):
                used.add(node.text.decode())
    trigger_only = {"NLsolve", "LineSearches", "SteadyStateDiffEq"}  # loaded for their effects
    assert _imported_names() - used - trigger_only == set()


def _ancestors(node):
    while node.parent is not None:
        node = node.parent
        yield node
