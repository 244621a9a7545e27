"""TOML tables -> frozen dataclasses, the machinery under config.py: unknown keys are errors,
values are converted by each field's type (Literal, unions with None, tuples, bool, int, float,
str, Path, nested dataclasses), and every error names the file, the key and why."""

from __future__ import annotations

import contextlib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints


class ConfigError(Exception):
    """A config problem, always naming where: file, key (dotted) and why."""

    def __init__(self, source: str, key: str, why: str) -> None:
        self.source, self.key, self.why = source, key, why
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {why}")


@dataclass
class TableReader:
    """Builds a frozen dataclass from a TOML table: unknown keys are errors, each value is
    converted by its field's type, relative paths resolve against the config's directory."""

    source: str
    base_dir: Path

    def build(
        self,
        cls: type[Any],
        data: Mapping[str, Any],
        prefix: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Any:
        hints = get_type_hints(cls)
        known = {f.name for f in fields(cls)} - set(extra or {})
        for k in data:
            if k not in known:
                where = f"{prefix}.{k}" if prefix else k
                raise ConfigError(
                    self.source,
                    where,
                    f"unknown key (known keys here: {', '.join(sorted(known))})",
                )
        kwargs: dict[str, Any] = dict(extra or {})
        for f in fields(cls):
            if f.name in kwargs or f.name not in data:
                continue
            where = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = self.convert(hints[f.name], data[f.name], where)
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ConfigError(self.source, prefix or "(top)", f"missing key {missing[0]}")
        return cls(**kwargs)

    def convert(self, tp: Any, value: Any, where: str) -> Any:
        origin = get_origin(tp)
        if origin is Literal:
            choices = get_args(tp)
            if value not in choices:
                raise ConfigError(
                    self.source,
                    where,
                    f"must be one of {', '.join(map(repr, choices))}, not {value!r}",
                )
            return value
        if origin in (types.UnionType, typing.Union):
            args = [a for a in get_args(tp) if a is not type(None)]
            if value == "" and type(None) in get_args(tp):
                return None
            try:
                return self.convert(args[0], value, where)
            except ConfigError:  # (int | str: the first type that takes it, else that error)
                for alternative in args[1:]:
                    with contextlib.suppress(ConfigError):
                        return self.convert(alternative, value, where)
                raise
        if origin is tuple:
            if not isinstance(value, list):
                raise ConfigError(self.source, where, f"must be a list, not {_tname(value)}")
            item = get_args(tp)[0]
            return tuple(self.convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
        if tp is bool:
            if not isinstance(value, bool):
                raise ConfigError(self.source, where, f"must be true or false, not {_tname(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(self.source, where, f"must be an integer, not {_tname(value)}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(self.source, where, f"must be a number, not {_tname(value)}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise ConfigError(self.source, where, f"must be a string, not {_tname(value)}")
            return value
        if tp is Path:
            if not isinstance(value, str) or not value:
                raise ConfigError(self.source, where, f"must be a path string, not {_tname(value)}")
            p = Path(value)
            return p if p.is_absolute() else (self.base_dir / p)
        if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise ConfigError(self.source, where, f"must be a table, not {_tname(value)}")
            return self.build(tp, value, where)
        raise ConfigError(self.source, where, f"unsupported type {tp!r}")  # pragma: no cover


def _tname(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
