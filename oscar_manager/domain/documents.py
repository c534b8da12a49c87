"""Bounded parsing of the JSON and YAML documents callers send: every body the manager parses goes here.

A body is what a caller chose, so its shape is refused (400) before recursive or quadratic code meets it:

- at most ``MAX_DEPTH`` levels of nesting: the parsers, ``json.dumps`` and pydantic recurse, and a deep
  document raised ``RecursionError`` from any of them;
- integers of at most ``MAX_INTEGER_DIGITS`` digits: converting a decimal integer costs time quadratic in
  its length (Python refuses past 4300 digits);
- finite numbers only (``NaN``, ``Infinity`` and ``1e999`` are not JSON, and PostgreSQL refuses them);
- JSON's values only: YAML timestamps stay the strings they were written as, keys must be strings, and
  other YAML types (sets, binary) are refused;
- YAML without aliases: a few hundred bytes of nested aliases expand to gigabytes ("billion laughs").

Malformed documents raise the parser's own error (``json.JSONDecodeError``, ``yaml.YAMLError``), so each
caller words it for its route; documents beyond the limits raise ``BadRequest`` saying which limit.
YAML is tokenised by libyaml when PyYAML has it (five times faster than PyYAML's own scanner); composing
nodes stays in Python, where the depth and the aliases are checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.resolver import Resolver

from oscar_manager.errors import BadRequest

MAX_DEPTH = 64
MAX_INTEGER_DIGITS = 1000


def _too_deep() -> BadRequest:
    return BadRequest(f"document nested too deeply: more than {MAX_DEPTH} levels of objects and arrays")


def _integer_too_long(text: str) -> BadRequest:
    return BadRequest(f"integer too long: {len(text)} characters (at most {MAX_INTEGER_DIGITS} digits)")


def _out_of_range(text: str) -> BadRequest:
    return BadRequest(f"number out of range: {text[:40]!r} is not a finite number")


def _json_integer(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INTEGER_DIGITS:
        raise _integer_too_long(text)
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _out_of_range(text)
    return value


def _json_constant(text: str) -> Any:
    raise BadRequest(f"{text} is not a JSON number")


def parse_json(text: str | bytes) -> Any:
    """The JSON value of ``text``, within the limits; ``json.JSONDecodeError`` (or ``UnicodeDecodeError``
    for bytes) when it is not JSON."""
    try:
        document = json.loads(
            text, parse_int=_json_integer, parse_float=_json_float, parse_constant=_json_constant
        )
    except RecursionError:
        raise _too_deep() from None
    # Counting brackets (in C) is cheap; only a document that could be too deep is walked.
    if _brackets(text) > MAX_DEPTH:
        check_value(document)
    return document


def _brackets(text: str | bytes) -> int:
    if isinstance(text, bytes):
        return text.count(b"{") + text.count(b"[")
    return text.count("{") + text.count("[")


def check_value(document: Any) -> None:
    """Refuse (400) a parsed document beyond the limits; without recursion, so any depth is safe."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        items: Iterable[Any]
        if isinstance(value, dict):
            items = value.values()
            for key in value:
                if not isinstance(key, str):
                    raise BadRequest(f"mapping keys must be strings, not {str(key)[:40]!r}")
        elif isinstance(value, list | tuple):  # tuples: YAML's !!omap and !!pairs
            items = value
        else:
            _check_scalar(value)
            continue
        if depth > MAX_DEPTH:
            raise _too_deep()
        pending.extend((item, depth + 1) for item in items)


def _check_scalar(value: Any) -> None:
    if value is None or isinstance(value, str | bool | int):
        return  # integers were bounded when parsed
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _out_of_range(str(value))
        return
    raise BadRequest(f"unsupported value of type {type(value).__name__}: documents hold JSON values only")


class _BoundedComposer(Composer):
    """Builds the node tree as PyYAML does, refusing aliases and nesting beyond ``MAX_DEPTH``."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        events: Any = self  # the parser's half of the loader
        if events.check_event(AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases are not allowed in service definitions",
                events.peek_event().start_mark,
            )
        if not events.check_event(SequenceStartEvent, MappingStartEvent):
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _too_deep()
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _JsonConstructor(SafeConstructor):
    """PyYAML's safe constructor, making JSON values only, with integers bounded before conversion."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(node.value)
        if len(text) > MAX_INTEGER_DIGITS:
            raise _integer_too_long(text)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _out_of_range(str(node.value))
        return value

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        return self.construct_scalar(node)  # as written: dates are not JSON values


for _tag, _construct in (
    ("int", _JsonConstructor.construct_yaml_int),
    ("float", _JsonConstructor.construct_yaml_float),
    ("timestamp", _JsonConstructor.construct_yaml_timestamp),
):
    _JsonConstructor.add_constructor(f"tag:yaml.org,2002:{_tag}", _construct)  # type: ignore[type-var]


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    # The Python composer first, so its compose_node (not libyaml's) builds the nodes from CParser's events.
    class _Loader(_BoundedComposer, _JsonConstructor, Resolver, CParser):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _JsonConstructor.__init__(self)
            Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, _BoundedComposer, _JsonConstructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            _BoundedComposer.__init__(self)
            _JsonConstructor.__init__(self)
            Resolver.__init__(self)


def parse_yaml(text: str) -> Any:
    """The value of one YAML document, within the limits; ``yaml.YAMLError`` when it is not YAML."""
    loader = _Loader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        # libyaml's own bound on flow nesting (1000 levels), met before ours.
        if "maximum nesting depth" in str(exc.problem):
            raise _too_deep() from None
        raise
    finally:
        loader.dispose()
    check_value(document)
    return document
