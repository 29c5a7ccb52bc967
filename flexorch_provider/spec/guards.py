"""What a spec's YAML is refused for before anything walks it: alias bombs, self-references,
characters YAML cannot hold. Each becomes a SpecError with the file and line."""

from __future__ import annotations

import yaml

from flexorch_provider.exceptions import SpecError, SpecProblem

MAX_VALUES = 100_000  # values in the spec once aliases are expanded (a real spec has hundreds)


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
