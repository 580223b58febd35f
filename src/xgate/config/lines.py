"""Lines of a YAML document: where each key and list item starts, so issues can name the line."""

from __future__ import annotations

from collections.abc import Mapping

import yaml

FieldPath = tuple[str | int, ...]


def duplicate_key_line(text: str) -> int | None:
    """The line of the first repeated mapping key (yaml-rs names the key but not where it is)."""
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    stack = [root] if root is not None else []
    seen: set[int] = set()  # an alias is the same node again: walk it once (an alias bomb is 9^9 walks)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                if key_node.value in keys:
                    line: int = key_node.start_mark.line + 1
                    return line
                keys.add(key_node.value)
                stack.append(value_node)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return None


def line_of(lines: Mapping[FieldPath, int], path: FieldPath) -> int | None:
    return next((lines[path[:cut]] for cut in range(len(path), -1, -1) if path[:cut] in lines), None)


def line_map(text: str) -> dict[FieldPath, int]:
    """The 1-based line of every mapping key and list item in a YAML document."""
    lines: dict[FieldPath, int] = {}
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return lines
    stack: list[tuple[yaml.Node, FieldPath]] = [(root, ())] if root is not None else []
    walked: set[int] = set()  # an alias repeats a node: its lines are those of the anchor, walked once
    while stack:
        node, path = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in walked:
            continue
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                lines[(*path, str(key_node.value))] = key_node.start_mark.line + 1
                stack.append((value_node, (*path, str(key_node.value))))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, index)) for index, item in enumerate(node.value))
    return lines
