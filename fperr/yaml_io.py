"""Bounded YAML loading for model specs.

``yaml.safe_load`` builds no arbitrary objects, but it still trusts a
document's *size*: anchors and aliases share one node between many places, so
a few kilobytes of nested aliases ("billion laughs") expand to 10^9 nodes as
soon as anything walks the result as a tree (pydantic validation does), and
deep nesting exhausts Python's recursion limit inside PyYAML's recursive
composer.  :func:`load_yaml` refuses, with one line naming the limit, a
document

* larger than :data:`MAX_BYTES`,
* nested deeper than :data:`MAX_DEPTH` collections,
* whose tree, with every alias expanded, has more than :data:`MAX_NODES`
  nodes (or an alias to a collection that contains it: a cycle),
* with a key repeated in one mapping (PyYAML silently keeps the last).

Merge keys (``<<: *base``) keep their YAML meaning: explicit keys may
override merged ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from .errors import SpecError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "load_yaml"]

MAX_BYTES = 8 * 2**20
"""Largest spec file read (a spec names weights; it does not hold them)."""
MAX_DEPTH = 200
"""Deepest nesting of collections; well within the recursion limit of the composer."""
MAX_NODES = 100_000
"""Most nodes of the document with every alias expanded."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A document over one of the limits; the message says which."""


def _where(node_or_event: Any) -> str:
    mark = getattr(node_or_event, "start_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts depth and expanded size while composing
    and refuses duplicate keys while constructing."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> size with aliases expanded

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            node = cast(Node, super().compose_node(parent, index))
            size = self._sizes.get(id(node))
            if size is None:  # the anchored collection is still being composed
                raise _Refused(f"alias *{event.anchor}{_where(event)} refers to a collection "
                               "that contains it (a cycle)")  # fmt: skip
        else:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels{_where(self.peek_event())}")
            node = cast(Node, super().compose_node(parent, index))
            self._depth -= 1
            size = 1 + sum(self._sizes[id(child)] for child in _children(node))
        if size > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} nodes with its aliases expanded"
                           f"{_where(node)} (an alias bomb?)")  # fmt: skip
        self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, str] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:  # merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if first is not None:
                raise _Refused(f"duplicate key {key!r}{_where(key_node)} (first{first})")
            seen[key] = _where(key_node)
        return super().construct_mapping(node, deep=deep)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(path: str | Path) -> Any:
    """Parse the YAML file ``path`` within the limits of the module docstring.

    Every problem (unreadable, too large, malformed, over a limit) raises
    :class:`~fperr.errors.SpecError` with one line naming the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpecError(f"{path}: {size:,} bytes; a model spec is at most {MAX_BYTES:,}")
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return _parse(data)
    except _Refused as exc:
        raise SpecError(f"{path}: YAML refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
        why = f": {problem}" if problem else ""
        raise SpecError(f"{path}: malformed YAML{at}{why}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of 10^5 digits
        raise SpecError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None


def _parse(data: bytes) -> Any:
    loader = BoundedLoader(data)  # reads the first bytes: may raise a ReaderError
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
