"""Parse-tree helpers for the Julia source checks (tree-sitter-julia; no Julia needed)."""

import glob
import os

import tree_sitter
import tree_sitter_julia

import pycdeq.julia as julia_package

BRIDGE = os.path.join(os.path.dirname(julia_package.__file__), "PycdeqBridge")
SOURCES = sorted(glob.glob(os.path.join(BRIDGE, "src", "*.jl")))
NOT_CODE = {"comment", "line_comment", "block_comment", "string_literal", "prefixed_string_literal"}


def parser():
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_julia.language()))


def parse(path):
    with open(path, "rb") as file:
        return parser().parse(file.read())


def walk(node):
    yield node
    for child in node.children:
        yield from walk(child)


def code_text(node) -> str:
    """The node's tokens outside comments and strings (docstrings included), space-separated."""
    if node.type in NOT_CODE:
        return ""
    if not node.children:
        return node.text.decode()
    return " ".join(filter(None, (code_text(child) for child in node.children)))


def function(name: str):
    """The long-form definition of ``name`` in the bridge sources (exactly one)."""
    found = []
    for path in SOURCES:
        for node in walk(parse(path).root_node):
            if node.type == "function_definition":
                signature = node.named_children[0]
                head = next((n for n in walk(signature) if n.type == "identifier"), None)
                if head is not None and head.text.decode() == name:
                    found.append(node)
    assert len(found) == 1, f"{name}: {len(found)} definitions"
    return found[0]


def calls(node, name: str):
    """Every call of ``name`` (plain or qualified, e.g. ``LuxCore.apply``) inside ``node``."""
    for child in walk(node):
        if child.type == "call_expression" and child.named_children[0].text.decode() == name:
            yield child


def arguments(call):
    """The argument nodes of a call (positional and keyword, in order)."""
    argument_list = call.named_children[-1]
    return [c for c in argument_list.named_children]
