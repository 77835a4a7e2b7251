"""YAML for files people hand us: specs, trainer configs, profiles, command-line values.

PyYAML's ``safe_load`` is safe against code execution but not against exhaustion or ambiguity. This loader
adds what a tool trusted with week-long jobs needs, and turns every failure into one sentence that keeps the
line and column:

* bytes first: a size limit, UTF-8 required (non-UTF-8 and binary files are named as such, with the offset);
* a depth limit checked while composing, so deep nesting is refused before Python's recursion limit;
* aliases counted and the alias-expanded size of the document bounded (the "billion laughs" is a few KB
  that expands to ~10^9 nodes: it is refused after composition, before anything walks or prints it);
* duplicate mapping keys refused, naming both lines;
* YAML 1.2 booleans: only ``true`` / ``false`` are booleans, so ``chat_template: off`` stays the string
  ``off`` (YAML 1.1 reads ``off``, ``no``, ``on``, ``yes`` as booleans; pydantic still accepts those strings
  for boolean fields).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sdpg.training.errors import short_repr

MAX_BYTES = 4 * 1024 * 1024
"""Largest YAML file read (a spec or config is a few KB; the largest shipped is under 10 KB)."""
MAX_DEPTH = 64
"""Deepest nesting of mappings / sequences."""
MAX_ALIASES = 1000
"""Most ``*alias`` references in one document."""
MAX_NODES = 200_000
"""Most nodes in a document once every alias is expanded."""


class YamlInputError(ValueError):
    """A YAML input that cannot be read safely; the message is one line naming the source."""


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader with depth / alias limits, duplicate keys refused, YAML 1.2 booleans."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(problem=f"more than {MAX_ALIASES} aliases", problem_mark=mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _SafeLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in seen:
            first = seen[key]
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_short(key)} (first on line {first.line + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_SafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.2 core booleans only (true/false in any case); drop the 1.1 yes/no/on/off resolver.
_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# YAML 1.2 floats: ``1e-3`` is a number (YAML 1.1 wants a dot in the mantissa and reads it as a string).
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)|\.nan|\.NaN|\.NAN)$"),
    list("-+0123456789."),
)


def _short(value: Any, limit: int = 60) -> str:
    return short_repr(value, limit, redacted=False)


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Node count with every alias expanded (shared nodes counted each time they are reached), memoised
    per node, so a bomb is measured in time linear in its text; stops counting past ``limit``."""
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = limit + 1  # a cycle counts as too large
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        else:
            total = 1
        memo[key] = min(total, limit + 1)
        return memo[key]

    return size(node)


def _where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _problem(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError):
        text = err.problem or err.context or "not valid YAML"
        if err.context and err.problem and "duplicate" not in text:
            text = f"{err.context}, {err.problem}"
    elif isinstance(err, yaml.reader.ReaderError):
        return f"character {err.character!r} at byte {err.position} is not allowed in YAML"
    else:
        text = str(err)
    return " ".join(str(text).split())


def loads(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document from ``text`` with the limits above; errors are ``YamlInputError`` naming
    ``source`` with the line and column."""
    if "\x00" in text:
        raise YamlInputError(f"{source}: is binary, not YAML text (NUL byte at character {text.index(chr(0))})")
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node, MAX_NODES)
        if n > MAX_NODES:
            raise YamlInputError(
                f"{source}: expands to more than {MAX_NODES:,} values through its aliases "
                f"({loader._aliases} alias references); write the values out or use fewer aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise YamlInputError(f"{source}: not valid YAML: {_where(e)}{_problem(e)}") from None
    except RecursionError:
        raise YamlInputError(f"{source}: nested too deeply to read") from None
    finally:
        loader.dispose()


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of ``path``; one-line errors for a missing file, a folder, a file too large,
    binary or non-UTF-8 content."""
    p = Path(path)
    if not p.exists():
        raise YamlInputError(f"{p}: no such {what}")
    if p.is_dir():
        raise YamlInputError(f"{p}: is a folder, not a {what}")
    if not p.is_file():
        raise YamlInputError(f"{p}: is not a regular file (a {what} was expected)")
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise YamlInputError(f"{p}: is {size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.0f} MiB a {what} may be")
        data = p.read_bytes()
    except OSError as e:
        raise YamlInputError(f"{p}: cannot be read ({e.strerror or e})") from None
    if b"\x00" in data:
        article = "an" if what[:1] in "aeiou" else "a"
        raise YamlInputError(f"{p}: is binary, not {article} {what} (NUL byte at offset {data.index(0)})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise YamlInputError(f"{p}: is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}, offset {e.start})") from None


def load_file(path: str | Path, what: str = "file", mapping: bool = True, empty_ok: bool = False) -> Any:
    """Read and parse a YAML file safely. ``mapping``: the top level must be a mapping; ``empty_ok``: an
    empty file is ``{}``."""
    p = Path(path)
    data = loads(read_text(p, what), str(p))
    if mapping:
        if data is None and empty_ok:
            return {}
        if data is None:
            raise YamlInputError(f"{p}: is empty (a {what} must be a YAML mapping)")
        if not isinstance(data, dict):
            raise YamlInputError(f"{p}: the top level must be a mapping of keys, got a {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A command-line value read as YAML (``1e-3``, ``true``, ``[a, b]``, ``null``), with the same limits;
    text that is not YAML stays the text itself. ``off`` / ``no`` stay strings."""
    try:
        return loads(text, "<value>")
    except YamlInputError:
        return text
