"""YAML for configs, stricter than ``yaml.safe_load`` where it would silently change the config.

- A key given twice in one mapping is an error naming both lines: PyYAML keeps the last, so a
  second ``selection:`` section used to discard the first without a word. (``<<: *anchor`` followed
  by a key of one's own is YAML's override and stays allowed.)
- Aliases may not expand past :data:`MAX_VALUES` values (a "billion laughs" file is 9 lines), nor
  refer to the node that contains them (a cycle no config can mean).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: Values a config may expand to through aliases; the largest shipped config has a few hundred.
MAX_VALUES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictYAMLError(yaml.YAMLError):
    """A YAML document that parses but would be read other than it reads."""


def _key_path(path: tuple[str, ...]) -> str:
    return ".".join(path) if path else "<top level>"


def _check_duplicates(node: MappingNode, path: tuple[str, ...]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
            continue
        key = (key_node.tag, key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise StrictYAMLError(
                f"the key {_key_path((*path, key_node.value))!r} is given twice, at lines {seen[key]} and {line} "
                "(the second would silently replace the first): keep one"
            )
        seen[key] = line


def _children(node: Node, path: tuple[str, ...]) -> list[tuple[Node, tuple[str, ...]]]:
    if isinstance(node, SequenceNode):
        return [(child, (*path, str(i))) for i, child in enumerate(node.value)]
    if isinstance(node, MappingNode):
        out: list[tuple[Node, tuple[str, ...]]] = []
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, ScalarNode) else "?"
            out += [(key_node, (*path, name)), (value_node, (*path, name))]
        return out
    return []


def check_document(root: Node) -> None:
    """Raise StrictYAMLError for a duplicate key, an alias cycle or an expansion past MAX_VALUES."""
    sizes: dict[int, int] = {}  # id(node) -> values it expands to (aliases share their node)
    on_path: set[int] = set()
    # Depth-first without recursion: a deeply nested document must not hit Python's stack limit.
    stack: list[tuple[Node, tuple[str, ...], bool]] = [(root, (), False)]
    while stack:
        node, path, done = stack.pop()
        if done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child, _ in _children(node, path))
            if sizes[id(node)] > MAX_VALUES:
                raise StrictYAMLError(f"{_key_path(path)}: expands to more than {MAX_VALUES:,} values through "
                                      "aliases (anchors repeated inside each other): write the values out")
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise StrictYAMLError(f"{_key_path(path)}: an alias refers to itself (a value containing itself)")
        if isinstance(node, MappingNode):
            _check_duplicates(node, path)
        on_path.add(id(node))
        stack.append((node, path, True))
        stack += [(child, child_path, False) for child, child_path in _children(node, path)
                  if id(child) not in sizes]
    return None


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` of one document, after :func:`check_document`. Raises yaml.YAMLError."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        check_document(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()
