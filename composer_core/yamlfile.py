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

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from composer_core.files import LIMIT_CONNECTORS, FileReadError, read_text

#: nodes in the document once every alias is expanded (10k registries take about 100k)
MAX_NODES = 1_000_000
#: levels of nesting; real files use fewer than ten
MAX_DEPTH = 100


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def printable_key(key: Any) -> str:
    """A mapping key as messages may show it: a plain name as is, anything else by its length.

    ``{url: r.io, password:hunter2}`` has a key ``password:hunter2`` (no space after the colon):
    a message naming the key must not print the password it holds."""
    text = str(key)
    return text if _PLAIN_KEY.fullmatch(text) else f"<a key of {len(text)} characters>"


class YamlFileError(Exception):
    """``unreadable``: the file could not be read at all; otherwise it is not acceptable YAML.
    ``reason`` never quotes the document's content (it may hold a password)."""

    def __init__(self, reason: str, *, unreadable: bool, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreadable = unreadable
        self.missing = missing


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


try:
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _Parser = None
if _Parser is not None:
    class _Loader(_Parser, SafeConstructor, yaml.resolver.Resolver):  # type: ignore[misc, valid-type]
        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
else:  # pragma: no cover - PyYAML without libyaml
    class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,  # type: ignore[no-redef]
                  yaml.composer.Composer, SafeConstructor, yaml.resolver.Resolver):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)


_TAG = "tag:yaml.org,2002:"
_STR, _NULL, _MAP, _SEQ, _MERGE = (_TAG + t for t in ("str", "null", "map", "seq", "merge"))


def _build(loader: Any, root: Node) -> Any:
    """Construct the document ``root`` in one iterative walk of the composed graph, refusing on
    the way what :func:`parse_yaml` promises to refuse.

    Aliases make the graph's nodes shared: each node is built once and its expanded size and
    depth memoised, so the walk is linear in the *written* document whatever it would expand to.
    Plain mappings, sequences, strings and nulls are built here (the hot path); every other tag
    goes to PyYAML's safe constructor."""
    done: dict[int, tuple[Any, int, int]] = {}  # id(node) -> (value, expanded size, depth)
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        ident = id(node)
        if children_done:
            on_path.discard(ident)
            done[ident] = _finish(loader, node, done)
            continue
        if ident in done:
            continue
        if isinstance(node, ScalarNode):
            tag = node.tag
            value = node.value if tag == _STR else None if tag == _NULL else loader.construct_object(node)
            done[ident] = (value, 1, 1)
            continue
        if ident in on_path:
            raise _Shape(node, "refers to itself through an alias")
        if len(on_path) >= MAX_DEPTH:
            raise _Shape(node, f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, MappingNode):
            _refuse_duplicates(node)
            if any(key.tag == _MERGE for key, _ in node.value):
                loader.flatten_mapping(node)
        on_path.add(ident)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in done)
    return done[id(root)][0]


def _finish(loader: Any, node: Node, done: dict[int, tuple[Any, int, int]]) -> tuple[Any, int, int]:
    children = [done[id(child)] for child in _children(node)]
    size = 1 + sum(child[1] for child in children)
    depth = 1 + max((child[2] for child in children), default=0)
    if size > MAX_NODES:
        raise _Shape(node, f"expands to more than {MAX_NODES:,} values through its aliases "
                           "(an alias bomb?)")
    if depth > MAX_DEPTH:
        raise _Shape(node, f"is nested more than {MAX_DEPTH} levels deep")
    if node.tag == _SEQ:
        return [child[0] for child in children], size, depth
    if node.tag == _MAP:
        value: dict[Any, Any] = {}
        for i in range(0, len(children), 2):
            try:
                value[children[i][0]] = children[i + 1][0]
            except TypeError:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       "found an unhashable key", node.value[i // 2][0].start_mark) from None
        return value, size, depth
    return loader.construct_object(node, deep=True), size, depth


def _refuse_duplicates(node: MappingNode) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE:
            continue
        key, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(key_node.value, seen[key], line)
        seen[key] = line


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
        return _build(loader, node)
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
        raise YamlFileError(f"not valid: key {printable_key(exc.key)!r} appears twice in the same mapping, "
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
