"""Reading YAML a user wrote: bounded, strict, and with errors that say where it is wrong.

Every YAML document xtm-composer reads on a user's word (settings files, connectors files, JSON
values of environment variables) goes through :func:`parse_yaml`, which refuses what
``yaml.safe_load`` lets through:

* **alias bombs** ("billion laughs"): the document, with every alias expanded, may hold at most
  :data:`MAX_NODES` nodes; the check walks the composed graph once, so a 1 KB bomb is refused in
  microseconds instead of expanding to gigabytes downstream;
* **deep nesting**: at most :data:`MAX_DEPTH` levels (the code that reads the result recurses);
* **duplicate keys** in a mapping, an error naming both lines (``safe_load`` keeps the last one
  silently, so a second ``password:`` would win unnoticed);
* control characters such as NUL, reported with their line and column.

Files are read through :mod:`composer_core.files` (regular files only, bounded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, SequenceNode

from composer_core.files import LIMIT_CONNECTORS, FileReadError, read_text

#: nodes in the document once every alias is expanded (10k registries take about 100k)
MAX_NODES = 1_000_000
#: levels of nesting; real files use fewer than ten
MAX_DEPTH = 100


class YamlFileError(Exception):
    """``unreadable``: the file could not be read at all; otherwise it is not acceptable YAML.
    ``reason`` never quotes the document's content (it may hold a password)."""

    def __init__(self, reason: str, *, unreadable: bool, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreadable = unreadable
        self.missing = missing


class _StrictConstructor(SafeConstructor):
    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:
                    continue  # an unhashable key: SafeConstructor reports it below
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


try:
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _Parser = None
if _Parser is not None:
    class _Loader(_Parser, _StrictConstructor, yaml.resolver.Resolver):  # type: ignore[misc, valid-type]
        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            _StrictConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
else:  # pragma: no cover - PyYAML without libyaml
    class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,  # type: ignore[no-redef]
                  yaml.composer.Composer, _StrictConstructor, yaml.resolver.Resolver):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _StrictConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)


def _check_shape(root: Node) -> None:
    """Refuse a graph that expands beyond :data:`MAX_NODES` or nests beyond :data:`MAX_DEPTH`.

    Aliases make the composed document a graph whose nodes are shared: sizes are memoised per
    node, so the walk is linear in the *written* document, whatever it would expand to."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, depth)
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        ident = id(node)
        if children_done:
            on_path.discard(ident)
            size, depth = 1, 1
            for child in _children(node):
                child_size, child_depth = done[id(child)]
                size += child_size
                depth = max(depth, child_depth + 1)
            if size > MAX_NODES:
                raise _Shape(node, f"expands to more than {MAX_NODES:,} values through its aliases "
                                   "(an alias bomb?)")
            if depth > MAX_DEPTH:
                raise _Shape(node, f"is nested more than {MAX_DEPTH} levels deep")
            done[ident] = (size, depth)
            continue
        if ident in done:
            continue
        if ident in on_path:
            raise _Shape(node, "refers to itself through an alias")
        on_path.add(ident)
        stack.append((node, True))
        if len(on_path) > MAX_DEPTH:
            raise _Shape(node, f"is nested more than {MAX_DEPTH} levels deep")
        for child in _children(node):
            if id(child) not in done:
                stack.append((child, False))


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class _Shape(Exception):
    def __init__(self, node: Node, problem: str) -> None:
        super().__init__(problem)
        self.node, self.problem = node, problem


def _at(text: str, position: int) -> str:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f" at line {line}, column {column}"


def parse_yaml(text: str) -> Any:
    """The one document in ``text``, or :class:`YamlFileError` saying where and why it is refused."""
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_shape(node)
        return loader.construct_document(node)
    except yaml.reader.ReaderError as exc:
        what = "a NUL character" if exc.character in (0, "\0") else "a control character"
        raise YamlFileError(f"not valid YAML{_at(text, exc.position)}: {what} is not allowed "
                            "(remove it; write special characters escaped in a double-quoted "
                            "string)", unreadable=False) from None
    except _Shape as exc:
        mark = exc.node.start_mark
        raise YamlFileError(f"refused: the value at line {mark.line + 1}, column {mark.column + 1} "
                            f"{exc.problem}", unreadable=False) from None
    except _DuplicateKey as exc:
        key = exc.key if isinstance(exc.key, (str, int, float, bool)) else "a key"
        raise YamlFileError(f"not valid: key {str(key)[:80]!r} appears twice in the same mapping, "
                            f"at line {exc.first} and line {exc.again} (keep one)",
                            unreadable=False) from None
    except RecursionError:  # pragma: no cover - only the pure-Python parser recurses
        raise YamlFileError(f"refused: nested more than {MAX_DEPTH} levels deep",
                            unreadable=False) from None
    except (yaml.YAMLError, ConstructorError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        if "nesting depth" in problem:
            problem = f"nested more than {MAX_DEPTH} levels deep"
        raise YamlFileError(f"not valid YAML{where}: {problem}", unreadable=False) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path, *, limit: int = LIMIT_CONNECTORS, what: str = "file") -> Any:
    """The YAML document of the regular file ``path`` (at most ``limit`` bytes)."""
    try:
        text = read_text(path, limit=limit, what=what)
    except FileReadError as exc:
        raise YamlFileError(exc.reason, unreadable=True, missing=exc.missing) from None
    return parse_yaml(text)
