"""Strict typed configuration: YAML sections -> dataclasses, with every value converted by its field's type.

One helper for every config the project reads (recipes, overrides, pipeline YAMLs):

- :func:`load_config_yaml` / :func:`parse_scalar` read YAML with YAML 1.2 scalars (dtwinseg.io's loader, the
  one every config file goes through): ``no`` / ``off`` stay strings, ``1e-4`` is a float (PyYAML's 1.1
  rules make the first ``False`` and the second a string);
- :func:`convert` turns a value into a type hint's type (``float``, ``int``, ``bool``, ``str``, enums,
  ``Literal``, ``list[X]``, ``dict``, ``X | None``, unions, nested dataclasses) or raises :class:`ConfigError`
  naming the field;
- :func:`build_dataclass` refuses unknown keys with a "did you mean";
- secrets: :func:`is_secret_key` matches exact secret key names (``api_key``, ``hub_token``, ``token``,
  ``password``, ...; never ``tokenizer`` or ``use_token_kinds``), :func:`redact` replaces their values.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from dtwinseg.io import DataError, YAMLBudgetError, load_yaml, parse_yaml

REDACTED = "<redacted>"
SECRET_KEYS = frozenset({
    "token", "hub_token", "hf_token", "access_token", "auth_token", "refresh_token", "api_key", "apikey",
    "openai_api_key", "wandb_api_key", "password", "passwd", "secret", "client_secret", "secret_key",
    "private_key", "hub_private_key",
})
_SECRET_SUFFIXES = ("_api_key", "_password", "_secret", "_secret_key", "_access_token", "_auth_token")


class ConfigError(DataError):
    """A configuration value or key is wrong: the message names the file, the field and what is wrong."""


def is_secret_key(key: object) -> bool:
    """True for exact secret key names (and ``*_api_key``-style suffixes); ``tokenizer`` is not one."""
    k = str(key).strip().lower().replace("-", "_")
    return k in SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def redact(obj: Any) -> Any:
    """A copy with the value of every secret-named key replaced by ``<redacted>`` (None stays None)."""
    if isinstance(obj, Mapping):
        return {k: (REDACTED if is_secret_key(k) and v is not None else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    return obj


def strip_secrets(obj: Any) -> Any:
    """A copy without any secret-named key (for files that leave the machine)."""
    if isinstance(obj, Mapping):
        return {k: strip_secrets(v) for k, v in obj.items() if not is_secret_key(k)}
    if isinstance(obj, list | tuple):
        return [strip_secrets(v) for v in obj]
    return obj


def secret_paths(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the secret-named keys set (not None) anywhere in ``obj``."""
    out: list[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            path = f"{prefix}{k}"
            if is_secret_key(k) and v is not None:
                out.append(path)
            else:
                out += secret_paths(v, path + ".")
    return out


# --- YAML with YAML 1.2 scalars (the loader lives in dtwinseg.io) -------------------------------------
MAX_OVERRIDE_CHARS = 100_000


def parse_scalar(text: str, field: str | None = None) -> Any:
    """An override's value as YAML 1.2 (``[a, b]``, ``{k: v}``, ``null``, ``1e-4``; ``no`` stays a string),
    through the one budgeted parser (:func:`dtwinseg.io.parse_yaml`): an alias bomb or an oversized value
    is a ConfigError naming ``field``, never a hang."""
    if len(text) > MAX_OVERRIDE_CHARS:
        raise ConfigError("override", field, f"value longer than {MAX_OVERRIDE_CHARS:,} characters")
    try:
        return parse_yaml(text)
    except YAMLBudgetError as e:
        raise ConfigError("override", field, f"refused: the YAML {e}") from None
    except yaml.YAMLError:
        return text


def load_config_yaml(path: str | os.PathLike) -> dict:
    """:func:`dtwinseg.io.load_yaml` with its errors as ConfigError (naming the file)."""
    try:
        return load_yaml(path)
    except DataError as e:
        raise ConfigError(e.path, e.field, e.message) from None


# --- conversion by type hint ------------------------------------------------------------------------
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _fail(where: tuple[str | None, str], what: str) -> ConfigError:
    return ConfigError(where[0], where[1] or None, what)


def _convert_union(value: Any, args: tuple, where: tuple[str | None, str]) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1 and value is not None:  # `X | None`: X's own message (a nested key's did-you-mean)
        return convert(value, options[0], where)
    lists = [a for a in options if (typing.get_origin(a) or a) is list]
    if isinstance(value, str) and "," in value and lists:  # "q_proj,v_proj" for `list[str] | str`
        return convert(value, lists[0], where)
    for a in options:  # an exact match first: "no" for `SaveStrategy | str` stays the string
        base = typing.get_origin(a) or a
        if isinstance(base, type) and not issubclass(base, enum.Enum) and isinstance(value, base) \
                and not (isinstance(value, bool) and base is not bool):
            return convert(value, a, where)
    errors = []
    for a in options:
        try:
            return convert(value, a, where)
        except ConfigError as e:
            errors.append(e.message)
    names = " or ".join(_type_name(a) for a in options) + (" or null" if type(None) in args else "")
    raise _fail(where, f"expected {names}, got {value!r}")


def convert(value: Any, hint: Any, where: tuple[str | None, str] = (None, "")) -> Any:
    """``value`` as the type ``hint`` names; ConfigError(file, field) when it cannot be.

    ``where`` is (file, dotted field) for the message. Strings convert to numbers / bools for numeric /
    bool fields (``"1e-4"`` -> 1e-4); numbers convert to strings for string fields.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin is typing.Union or origin is types.UnionType:
        return _convert_union(value, args, where)
    if origin is typing.Literal:
        if value in args:
            return value
        raise _fail(where, f"expected one of {list(args)}, got {value!r}")
    if value is None:
        raise _fail(where, f"expected {_type_name(hint)}, got null")
    if origin in (list, tuple, set) or hint in (list, tuple, set):
        item = args[0] if args else Any
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise _fail(where, f"expected a list, got {value!r}")
        return [convert(v, item, (where[0], f"{where[1]}[{i}]")) for i, v in enumerate(value)]
    if origin is dict or hint is dict or origin is Mapping:
        if not isinstance(value, dict):
            raise _fail(where, f"expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return build_dataclass(hint, value, where[0], where[1])
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            choices = [m.value for m in hint]
            raise _fail(where, f"expected one of {choices}, got {value!r}") from None
    return _convert_scalar(value, hint, where)


def _convert_scalar(value: Any, hint: Any, where: tuple[str | None, str]) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str | int) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise _fail(where, f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d{1,30}", value.strip()):
            return int(value)
        raise _fail(where, f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _fail(where, f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _fail(where, f"expected a string, got {value!r}")
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _fail(where, f"expected {_type_name(hint)}, got {value!r}")
    return value


def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved type hint} of a dataclass, read from the class (subclass fields included)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def unknown_key_error(key: str, known: list[str], path: str | None, section: str) -> ConfigError:
    """ConfigError for an unknown key, with the closest known names."""
    field = f"{section}.{key}" if section else key
    close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6) or \
        [k for k in known if str(key).startswith(k) or k.startswith(str(key))][:3]
    hint = f"; did you mean {' or '.join(repr(f'{section}.{c}' if section else c) for c in close)}?" if close \
        else ""
    return ConfigError(path, field, f"unknown key{hint}")


def convert_fields(cls: type, data: Mapping, path: str | None = None, section: str = "") -> dict:
    """``data`` with every key checked against ``cls``'s fields and its value converted to the field type."""
    if not isinstance(data, Mapping):
        raise ConfigError(path, section or None, f"expected a mapping, got {data!r}")
    types_ = field_types(cls)
    out = {}
    for key, value in data.items():
        if key not in types_:
            if is_secret_key(key):
                field = f"{section}.{key}" if section else str(key)
                raise ConfigError(path, field, "never put a key in a config; set the *_env field to the name "
                                  "of an environment variable that holds it")
            raise unknown_key_error(str(key), sorted(types_), path, section)
        out[key] = convert(value, types_[key], (path, f"{section}.{key}" if section else str(key)))
    return out


def build_dataclass(cls: type, data: Mapping | None, path: str | os.PathLike | None = None,
                    section: str = "") -> Any:
    """``cls(**data)`` after :func:`convert_fields`; a __post_init__ ValueError becomes a ConfigError.

    A DataError raised by ``cls`` without a file gets ``path``, and its field gets the ``section`` prefix
    (``format.tokens_per_object``) unless it already has it.
    """
    path = None if path is None else str(path)
    kwargs = convert_fields(cls, data or {}, path, section)
    try:
        return cls(**kwargs)
    except DataError as e:
        raise _located(e, path, section) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(path, section or None, " ".join(str(e).split())) from None


C = typing.TypeVar("C", bound="StrictConfig")


class StrictConfig:
    """Mixin of the config dataclasses: a strict :meth:`from_dict` (:func:`build_dataclass`), :meth:`from_yaml`
    (:func:`dtwinseg.io.load_yaml`) and :meth:`to_dict`, written once. ``SECTION`` is the dotted prefix
    errors name when the config is a section of a larger file (``vlm`` in a perception config)."""

    SECTION = ""

    @classmethod
    def from_dict(cls: type[C], d: Mapping | None, *, path: str | os.PathLike | None = None) -> C:
        """Strict: unknown keys (did-you-mean), keys holding secrets and mistyped values are a ConfigError
        naming the file and the dotted field."""
        return build_dataclass(cls, d, path, cls.SECTION)

    @classmethod
    def from_yaml(cls: type[C], path: str | os.PathLike) -> C:
        return cls.from_dict(load_yaml(path), path=path)

    def to_dict(self) -> dict:
        """Plain dict (YAML / JSON-safe; configs hold only the names of key variables, never a key)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _located(e: DataError, path: str | None, section: str) -> DataError:
    """``e`` with the file filled in and the field prefixed by ``section`` (when it lacks either)."""
    field = e.field
    if section and (not field or not (field == section or field.startswith(section + "."))):
        field = f"{section}.{field}" if field else section
    if e.path is not None or path is None:
        return type(e)(e.path, field, e.message) if field != e.field else e
    return type(e)(path, field, e.message)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"`` (sections created as needed)."""
    parts = key.split(".")
    node = data
    for k, p in enumerate(parts[:-1]):
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(None, ".".join(parts[:k + 1]), "is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _accepts(hint: Any, kinds: tuple[type, ...]) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts(a, kinds) for a in typing.get_args(hint))
    return hint in kinds or hint is Any


def convert_text(text: str, hint: Any, where: tuple[str | None, str] = (None, "")) -> Any:
    """A ``key=value`` override's text converted by the field's type (``1e-4`` float, ``no`` the string)."""
    parsed = parse_scalar(text, where[1] or None)
    numeric = isinstance(parsed, int | float) and not isinstance(parsed, bool)
    if numeric and _accepts(hint, (str,)) and not _accepts(hint, (int, float)):
        return text  # a string field keeps what was typed ("007", "1e-4")
    return convert(parsed, hint, where)
