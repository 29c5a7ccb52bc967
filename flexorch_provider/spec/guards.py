"""What a spec's YAML is refused for before anything walks it: nesting deeper than a spec needs,
alias bombs, self-references, characters YAML cannot hold. Each becomes a SpecError with the
file and line."""

from __future__ import annotations

import yaml

from flexorch_provider.exceptions import SpecError, SpecProblem

MAX_VALUES = 100_000  # values in the spec once aliases are expanded (a real spec has hundreds)
MAX_DEPTH = 100  # nested collections (a real spec has under ten)
_NESTERS = (
    "[",
    "{",
    "- ",
    "-\n",
)  # what a deep nesting would show (block mappings nest by indentation: bounded by the size)
_STARTS = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
           yaml.FlowSequenceStartToken)  # fmt: skip
_ENDS = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def check_depth(text: str, file: str) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH before it is composed: libyaml composes a node
    tree recursively, and 30,000 nested ``[`` crash the process (no exception to catch) —
    ``flexorch validate`` died with no message and the dag-processor on every parse. Only the
    scanner's tokens are read here (it does not recurse); a text too small to nest that deep is
    not scanned at all."""
    if sum(text.count(n) for n in _NESTERS) <= MAX_DEPTH:
        return
    depth = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, _STARTS):
                depth += 1
            elif isinstance(token, _ENDS):
                depth -= 1
            if depth > MAX_DEPTH:
                raise SpecError(
                    SpecProblem(
                        file,
                        token.start_mark.line + 1,
                        "",
                        f"the YAML is nested more than {MAX_DEPTH} levels deep; a spec needs a few",
                    )
                )
    except yaml.YAMLError:
        return  # invalid YAML: the parser says where, with its own message


def check_expansion(root: yaml.Node, file: str) -> None:
    """Refuse a tree whose aliases expand beyond MAX_VALUES values, or refer to themselves,
    before anything walks it: a 1 KB "billion laughs" spec would otherwise cost minutes and
    gigabytes. Each distinct node is sized once, so this is linear in the text."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not children_done:
            if key in open_nodes:
                raise SpecError(SpecProblem(file, node.start_mark.line + 1, "", "an alias refers to itself; remove it"))
            open_nodes.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise SpecError(
                        SpecProblem(file, child.start_mark.line + 1, "", "an alias refers to itself; remove it")
                    )
                stack.append((child, False))
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(c)] for c in children)
        if sizes[key] > MAX_VALUES:
            raise SpecError(
                SpecProblem(
                    file,
                    node.start_mark.line + 1,
                    "",
                    f"the YAML aliases (*name) expand to more than {MAX_VALUES:,} values; a spec never needs "
                    "that many: write the values out, or reuse fewer anchors",
                )
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def unprintable(e: yaml.reader.ReaderError) -> str:
    char = e.character if isinstance(e.character, str) else chr(e.character)
    return (
        f"character {char!r} (U+{ord(char):04X}) cannot appear in YAML; remove it, or write it as an escape "
        'in a double-quoted string ("\\x01")'
    )
