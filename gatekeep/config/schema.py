"""
A small declarative layer from TOML tables to attrs classes.

Each config class declares its keys with :func:`setting` (doc, default, parser), so
one description drives loading, error messages (unknown keys with a suggestion, bad
values with the TOML path) and the generated config reference in docs/.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from gatekeep.config.errors import ConfigError

__all__ = [
    "PLANNED",
    "REQUIRED",
    "key_path",
    "load_table",
    "setting",
    "unknown_key_error",
]

REQUIRED = attrs.NOTHING

#: Keys of the gatekeep contract (CONFIG.md) that this version does not implement
#: yet, with the issue that brings them. Using one is an error that says so,
#: rather than a setting silently ignored.
PLANNED: Mapping[str, str] = {
}


def setting(
    doc: str,
    default: Any = REQUIRED,
    parse: Callable[[Any], Any] | None = None,
    shown: str | None = None,
) -> Any:
    """
    Declare one config key.

    ``parse`` turns the TOML value into the model's value, raising ValueError or
    TypeError with a message for the user; ``shown`` is how docs print the default.
    """
    metadata = {"doc": doc, "parse": parse, "shown": shown}
    return attrs.field(default=default, metadata=metadata, kw_only=True)


def key_path(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    shown = key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'
    return f"{base}.{shown}" if base else shown


def unknown_key_error(path: str, key: str, known: list[str]) -> ConfigError:
    where = key_path(path, key)
    if key in PLANNED:
        return ConfigError(
            where,
            f"'{key}' belongs to {PLANNED[key]}, which this version of gatekeep "
            "does not implement yet",
            "remove it for now",
        )
    close = difflib.get_close_matches(key, known, n=1)
    fix = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(known)}"
    return ConfigError(where, f"unknown key '{key}'", fix)


def load_table(
    cls: Any, table: object, path: str, errors: list[ConfigError], **given: Any
) -> Any:
    """
    Build ``cls`` from a TOML table, appending every problem to ``errors``.

    ``given`` supplies values that do not come from the table (a name taken from
    the table's own key, for instance). Returns None if anything was wrong.
    """
    if not isinstance(table, dict):
        errors.append(ConfigError(path, f"expected a table, got {_toml_type(table)}"))
        return None
    fields = {f.name: f for f in attrs.fields(cls) if "doc" in f.metadata}
    before = len(errors)
    values: dict[str, Any] = dict(given)
    for key in table:
        if key not in fields or key in given:
            errors.append(unknown_key_error(path, key, [k for k in fields if k not in given]))
    for name, field in fields.items():
        if name in given:
            continue
        if name not in table:
            if field.default is REQUIRED:
                errors.append(ConfigError(key_path(path, name), "missing required key"))
            continue
        parse = field.metadata["parse"]
        try:
            values[name] = parse(table[name]) if parse else table[name]
        except (ValueError, TypeError) as error:
            errors.append(ConfigError(key_path(path, name), str(error)))
    if len(errors) > before:
        return None
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:  # checks across keys, in the class itself
        errors.append(ConfigError(path, str(error)))
        return None


def _toml_type(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def expect(kind: type | tuple[type, ...], what: str) -> Callable[[Any], Any]:
    """A parser that only checks the TOML type (bool is not an int here)."""

    def check(value: Any) -> Any:
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise TypeError(f"expected {what}, got {_toml_type(value)}")
        if not isinstance(value, kind):
            raise TypeError(f"expected {what}, got {_toml_type(value)}")
        return value

    return check
