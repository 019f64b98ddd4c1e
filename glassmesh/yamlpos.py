"""Map a field path (`services[1].port`) to the line it came from in a YAML file.

Validation happens on plain Python data, which has lost every position. The
operator needs `mesh.yaml:12`, so the text is also composed into YAML nodes
(which keep their marks) and each error's path is walked down that tree.
Duplicate mapping keys are found here too: `yaml.safe_load` silently keeps the
last one, which would hide an operator's mistake.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import yaml

_SEG = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_path(path: str) -> list[str | int]:
    """'services[1].port' -> ['services', 1, 'port']."""
    out: list[str | int] = []
    for m in _SEG.finditer(path):
        out.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    return out


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster on big meshes


def compose(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=_Loader)


def load(text: str) -> tuple[yaml.Node | None, object]:
    """Parse once: the node tree (for line numbers) and the plain data built from it."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def line_of(root: yaml.Node | None, path: str) -> int:
    """1-based line of the deepest node on `path` that exists (the key's line for a mapping entry)."""
    if root is None:
        return 1
    node: yaml.Node = root
    line = node.start_mark.line + 1
    for seg in split_path(path):
        if isinstance(node, yaml.MappingNode) and isinstance(seg, str):
            hit = next(((k, v) for k, v in node.value if getattr(k, "value", None) == seg), None)
            if hit is None:
                return line
            line = hit[0].start_mark.line + 1
            node = hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(seg, int) and seg < len(node.value):
            node = node.value[seg]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def duplicate_keys(root: yaml.Node | None, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(path, line) of every mapping key that appears twice in the same mapping."""
    if isinstance(root, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in root.value:
            key = str(getattr(k, "value", ""))
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                yield path, k.start_mark.line + 1
            seen.add(key)
            yield from duplicate_keys(v, path)
    elif isinstance(root, yaml.SequenceNode):
        for i, v in enumerate(root.value):
            yield from duplicate_keys(v, f"{prefix}[{i}]")
