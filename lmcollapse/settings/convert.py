"""From text and plain data to typed settings: YAML parsed with YAML 1.2 numbers and
duplicate keys refused, and :func:`build`, which makes a settings dataclass from a mapping,
coercing each value to its field's declared type (``5e-5`` is a float even though PyYAML
reads it as a string) and refusing an unknown key with the valid ones and a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from typing import Any, Literal

import yaml

from lmcollapse.checks import MAX_INT
from lmcollapse.errors import ConfigError
from lmcollapse.registry import settings_of, unknown_name_message
from lmcollapse.settings.sections import NamedPart, Sections


class DuplicateKey(yaml.YAMLError):
    """A mapping that names one key twice (the last would silently win)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers: ``1:30`` is a string, not 90 (YAML 1.1
    reads colon-separated digits as base 60); a key given twice in one mapping is refused
    with both lines, not silently overwritten by the last."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKey(f"line {line}: the key {key!r} is given twice in one "
                                   f"mapping (first on line {seen[key]}); keep one")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0b[01_]+|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT_TAG, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                               |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                               |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, what: str) -> Any:
    """Parse YAML text with :class:`_Loader`; any failure (syntax, a tag that cannot be
    built such as ``!!float abc``, nesting too deep, a number too long) is a ConfigError
    naming ``what``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what}: not valid YAML ({type(err).__name__}: {first[:200]})"
                          ) from None


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the annotation ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        words = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}
        kinds = " or ".join(words.get(_type_name(a), _type_name(a)) for a in args
                            if a is not type(None))
        raise ConfigError(f"{where}: invalid value {value!r}; allowed: {kinds}"
                          + (" or null" if type(None) in args else ""))
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads no/off/false and yes/on/true as booleans
            spellings = ("yes", "on", "true") if value else ("no", "off", "false")
            value = next((a for a in allowed if isinstance(a, str) and a in spellings), value)
        if value not in allowed:
            raise ConfigError(
                f"{where}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}"
            )
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and issubclass(tp, NamedPart) and isinstance(value, str):
            value = {"name": value}
        if value is None:
            raise ConfigError(f"{where}: expected a mapping of settings, got null (leave the "
                              "key out for the defaults)")
        return build(tp, value, where)
    if tp is Any:
        return value
    return _coerce_scalar(value, tp, where)


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float) and not (math.isfinite(value)
                                                   and abs(value) <= MAX_INT):
            raise ConfigError(f"{where}: expected an integer of at most {MAX_INT} in size, "
                              f"got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)
            except ValueError:
                raise bad from None
            if as_float.is_integer() and abs(as_float) <= MAX_INT:
                return int(as_float)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}: YAML reads yes, no, "
                              "on, off, true and false unquoted as booleans; quote it "
                              f"(\"{'yes' if value else 'no'}\")")
        raise bad
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types, resolved once (a population builds its config per
    participant: typing.get_type_hints each time took most of a large one's load)."""
    return typing.get_type_hints(cls)


def build(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys with the valid ones.

    A :class:`Sections` class also takes one key per registered part (its settings); a
    :class:`PolicySpec` passes every key but ``name``, ``label`` and ``epochs`` to the
    named policy's settings."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    if issubclass(cls, NamedPart):
        return _build_named(cls, data, where)
    data = _renamed(cls, data, where)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "sections"]
    owners = cls.owners() if issubclass(cls, Sections) else {}
    kwargs: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key in owners:
            if value is None:
                raise ConfigError(f"{path}: expected a mapping of settings, got null (leave "
                                  "the key out for the defaults)")
            sections[key] = build(settings_of(owners[key]), value, path)
            continue
        if key not in names:
            valid = names + sorted(owners)
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {path!r}{hint}; valid keys: {', '.join(valid)}")
        kwargs[key] = _coerce(value, hints[key], path)
    if owners:
        kwargs["sections"] = sections
    return cls(**kwargs)


def _renamed(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with the old keys a settings class declares (``renamed``: old -> new) read
    as their new names (a config or a run directory written before the rename); both at
    once are refused."""
    renamed: dict[str, str] = getattr(cls, "renamed", {})
    if not any(old in data for old in renamed):
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{where + '.' if where else ''}{old}: the old name of "
                                  f"{new}; give one of them, not both")
            out[new] = out.pop(old)
    return out


def _build_named(cls: type[NamedPart], data: dict[str, Any], where: str) -> NamedPart:
    keys = cls.own_keys()
    if cls.name_required and "name" not in data:
        raise ConfigError(f"{where}.name: missing; name one of: "
                          f"{', '.join(cls.registry.names())}")
    own = {k: v for k, v in data.items() if k not in keys}
    name = _coerce(data.get("name", cls.name), str, f"{where}.name") or (
        cls.registry.default() if not cls.name_required else "")
    kind = cls.registry.kind
    if name not in cls.registry:
        raise ConfigError(f"{where}.name: " + unknown_name_message(kind, name,
                                                                   cls.registry.names()))
    settings_cls = settings_of(cls.registry.get(name))
    own = _renamed(settings_cls, own, where)
    allowed = [f.name for f in dataclasses.fields(settings_cls)]
    for key in own:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed + keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}.{key}: {kind} {name!r} takes no setting {key!r}{hint}; its own "
                f"settings: {', '.join(allowed) or 'none'}; every {kind} takes "
                f"{', '.join(keys)}")
    hints = _hints(cls)
    common = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()
              if k in keys and k != "name"}
    return cls(name=name, settings=build(settings_cls, own, where), **common)
