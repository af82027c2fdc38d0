"""Typed configs: dataclasses with the papers' defaults, per-benchmark defaults, `--set` overrides, content hashes.

Every hyperparameter of a method or of the shared classifier is a field of a frozen dataclass. Values given on the
command line as strings (`--set knn.k=100`) are converted to the field's declared type; an unknown key or a value
of the wrong type is a `HarnessError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from harness.errors import HarnessError

C = TypeVar("C")

# Which source a synthesis method's defaults follow: the paper's text (default) or the official code. A method
# declares its departures once (`Method.reference_settings`); individual `--set` fields still override.
Protocol = Literal["paper", "reference"]


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


MAX_SEED = 2**32 - 1  # the largest seed a run, a spec or a record may name (numpy's generators take up to it)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (in a JSON file or a config, `true` is not 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_whole(value: Any, low: int, high: int) -> bool:
    """An int (not a bool) from `low` to `high`."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (often a CLI string) to the declared type `tp`, or raise a one-line HarnessError."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise HarnessError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, choices))}")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except HarnessError as err:
                errors.append(str(err))
        raise HarnessError(errors[0] if errors else f"{key}={value!r} has the wrong type")
    if origin in (tuple, list):
        (item_tp, *rest) = get_args(tp) or (str,)
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [coerce(v.strip() if isinstance(v, str) else v, item_tp, key) for v in items if v != ""]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise HarnessError(f"{key}={value!r} is not a boolean; use true or false")
    if tp is int:
        if isinstance(value, bool):
            raise HarnessError(f"{key}={value!r} is not an integer; give a whole number such as {key}=10")
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise HarnessError(f"{key}={value!r} is not an integer; give a whole number such as {key}=10") from None
    if tp is float:
        try:
            number = float(value if is_number(value) else str(value))
        except ValueError:
            raise HarnessError(f"{key}={value!r} is not a number; give a value such as {key}=0.1") from None
        if not math.isfinite(number):
            raise HarnessError(f"{key}={value!r} is not a finite number; give a value such as {key}=0.1")
        return number
    if tp is str:
        return str(value)
    if tp is Any:
        return value
    raise HarnessError(f"{key}: cannot set a field of type {_type_name(tp)} from the command line")


def current_names(cls: type, overrides: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """`overrides` with every old name of a renamed field (`cls.renamed`, a ClassVar: old name -> field name)
    replaced by the field's name; both names at once is refused in one line."""
    overrides = dict(overrides)
    for old_name, name in getattr(cls, "renamed", {}).items():
        if old_name in overrides:
            if name in overrides:
                raise HarnessError(f"{prefix}.{old_name} is the old name of {prefix}.{name} and both are set; "
                                   f"set only {prefix}.{name}")
            overrides[name] = overrides.pop(old_name)
    return overrides


def build_config(cls: type[C], overrides: Mapping[str, Any], prefix: str) -> C:
    """Instantiate config dataclass `cls` from defaults plus `overrides` (values coerced to field types).

    `prefix` names the config in error messages (e.g. `knn` for `--set knn.k=...`). A renamed field keeps its old
    spelling (`current_names`).
    """
    overrides = current_names(cls, overrides, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in config_fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        valid = ", ".join(f"{prefix}.{name}" for name in fields) or "(none)"
        raise HarnessError(f"unknown setting {prefix}.{unknown[0]}; valid settings are: {valid}")
    values = {name: coerce(value, hints[name], f"{prefix}.{name}") for name, value in overrides.items()}
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:  # __post_init__ validation
        raise HarnessError(f"{prefix}: {err}") from None


def parse_set_options(items: list[str]) -> dict[str, dict[str, str]]:
    """Parse `["knn.k=100", "classifier.epochs=3"]` into `{"knn": {"k": "100"}, "classifier": {"epochs": "3"}}`."""
    parsed: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        scope, dot, name = key.strip().partition(".")
        if not sep or not dot or not scope or not name:
            raise HarnessError(f"--set {item!r} is malformed; write --set METHOD.FIELD=VALUE, e.g. --set knn.k=100")
        parsed.setdefault(scope, {})[name] = value.strip()
    return parsed


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def content_hash(*parts: Any, length: int = 16) -> str:
    """Stable hash of JSON-able parts (dataclasses allowed): the cache key of a stage."""
    blob = json.dumps([to_jsonable(p) for p in parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def changed_fields(config: Any, baseline: Any) -> dict[str, Any]:
    """Fields of `config` whose value differs from `baseline` (same dataclass type)."""
    return {
        f.name: getattr(config, f.name)
        for f in config_fields(type(config))
        if getattr(config, f.name) != getattr(baseline, f.name)
    }


def describe_fields(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type name, default) for each field, for `harness list`."""
    hints = typing.get_type_hints(cls)
    return [(f.name, _type_name(hints[f.name]), field_default(f)) for f in config_fields(cls)]
