"""Typed configuration trees, loaded from YAML recipes and overridden from the command line.

A config is a tree of dataclasses. ``load_config(cls, yaml_path, overrides)`` starts from the
dataclass defaults, merges the YAML file, then applies overrides such as ``optim.base_lr=0.5``
or ``--optim.base_lr 0.5``. Unknown keys and values of the wrong type are refused with one line
that names the key and the file, before any work starts.

Validation has one style for every config tree (pretraining methods and fine-tuning): each dataclass may
define ``checks() -> [(holds, key, what it must be)]`` about its own fields (keys relative to it), and a
tree's root may add checks across sections (dotted keys). ``validate`` runs them all, prefixing each
section's keys with its path, and raises ``ConfigError`` naming the first key that fails and its value.
``load_config`` validates what it builds.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mcl.errors import UserError

T = TypeVar("T")
Check = tuple[bool, str, str]   # (condition that must hold, key, what it must be)

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A recipe path as given, or a recipe name (``cpu_smoke``) looked up among the packaged recipes."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (PACKAGED_CONFIGS / path.name, PACKAGED_CONFIGS / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file not found: {name_or_path} (give a YAML path or one of: {known})")


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a type annotation, converting where it is lossless (int -> float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} is not a valid value (expected {_describe(annotation)})")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {value!r} should be a list (expected {_describe(annotation)})")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return list(items) if origin is list else tuple(items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} should be true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} should be an integer")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: {value!r} should be a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: {value!r} should be a string")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: should be a mapping of {annotation.__name__} keys")
        return _build(annotation, value, key)
    return value


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from defaults updated with the (possibly partial) mapping ``values``."""
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (known keys under {prefix or 'the top level'}: "
            f"{', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            kwargs[name] = _build(annotation, value, key)
        else:
            kwargs[name] = _coerce(value, annotation, key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def to_dict(config: Any) -> dict[str, Any]:
    """The config tree as plain dicts and lists (YAML- and checkpoint-safe)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Rebuild a config tree from ``to_dict``'s output (for example from a checkpoint)."""
    return _build(cls, values)


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "--c.d", "x", "--e.f=2"]`` into a nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            body = token[2:]
            if "=" in body:
                key, raw = body.split("=", 1)
            else:
                if i + 1 >= len(tokens):
                    raise ConfigError(f"override {token} has no value (write {token} VALUE or {body}=VALUE)")
                key, raw = body, tokens[i + 1]
                i += 1
        elif "=" in token:
            key, raw = token.split("=", 1)
        else:
            raise ConfigError(f"cannot read argument {token!r} (overrides look like section.key=value)")
        key = key.replace("-", "_")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = value
        i += 1
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} should hold a mapping of sections, not {type(data).__name__}")
    return data


def read_values(path: str | Path | None = None,
                overrides: list[str] | dict | None = None) -> tuple[dict[str, Any], str]:
    """The YAML file at ``path`` (a path or a packaged recipe name) merged with ``overrides``, as a nested dict,
    and where it came from (for error messages)."""
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        resolved = resolve_config_path(path)
        values = read_yaml(resolved)
        source = str(resolved)
    if overrides:
        extra = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        values = merge(values, extra)
        source += " + command line"
    return values, source


def build_config(cls: type[T], values: dict[str, Any], source: str = "defaults") -> T:
    """Defaults of ``cls`` updated with ``values``, then :func:`validate`; errors say ``[in source]``."""
    try:
        cfg = _build(cls, values)
        validate(cfg)
        return cfg
    except ConfigError as exc:
        raise ConfigError(f"{exc} [in {source}]") from exc


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict | None = None) -> T:
    """Defaults of ``cls`` <- YAML file at ``path`` <- command-line ``overrides``, validated."""
    return build_config(cls, *read_values(path, overrides))


def collect_checks(config: Any, prefix: str = "") -> list[Check]:
    """Every section's ``checks()`` with its keys prefixed by the section's path, sections first, then the
    node's own (a root's checks are across sections and name their dotted keys in full)."""
    out: list[Check] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out += collect_checks(value, f"{prefix}{f.name}.")
    own = config.checks() if hasattr(config, "checks") else []
    return out + [(ok, f"{prefix}{key}", why) for ok, key, why in own]


def validate(config: Any) -> None:
    """Refuse values that cannot work, with one line naming the first key that fails and its value."""
    for ok, key, why in collect_checks(config):
        if not ok:
            raise ConfigError(f"{key} = {value_at(config, key)!r} {why}")


def value_at(config: Any, dotted: str) -> Any:
    """``value_at(cfg, "optim.base_lr") == cfg.optim.base_lr``."""
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def save_yaml(config: Any, path: str | Path) -> None:
    """Write the resolved config beside a run (atomically, through ``mcl.engine.atomic``)."""
    from mcl.engine.atomic import write_text_atomic

    write_text_atomic(Path(path), yaml.safe_dump(to_dict(config), sort_keys=False))
