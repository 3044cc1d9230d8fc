"""Config schemas: every key of a config with its type, its range or choices and its meaning,
checked in one pass at start-up, before anything is read or compiled; the config's rules across
keys; the keys a resumed run may not change. The tables themselves sit beside the configs they
describe (bertjax/configs/base.py, finetune_glue.py, finetune_squad.py)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

from bertjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its type, the values it may take and what it means."""

    meaning: str
    type: type  # bool, int, float (an int is a float too), str or tuple
    low: float | None = None  # the smallest value allowed
    high: float | None = None  # the largest value allowed
    above: float | None = None  # values must be greater than this
    below: float | None = None  # values must be smaller than this
    choices: tuple = ()  # the values allowed (empty: any)
    not_equal: tuple = ()  # values excluded from the range (mesh axes: 0)
    pattern: str | None = None  # a str must match this regular expression whole
    item: Key | None = None  # a tuple's items
    none: bool = False  # None allowed too
    fixed_on_resume: bool = False  # changes the objective, the data or the state's layout

    def problem(self, value) -> str | None:
        """What is wrong with `value`, in words (None: nothing)."""
        if value is None:
            return None if self.none else f"must be {self.kind()}, not None"
        wrong_type = (
            isinstance(value, bool) != (self.type is bool)
            or (self.type is float and not isinstance(value, (int, float)))
            or (self.type not in (float, tuple) and not isinstance(value, self.type))
            or (self.type is tuple and not isinstance(value, (tuple, list)))
        )
        if wrong_type:
            return f"must be {self.kind()}"
        if self.type is float and not math.isfinite(value):
            return "must be a finite number"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"must be {self.kind()}"
        if value in self.not_equal or not self._in_range(value):
            return f"must be {self.range()}"
        if self.item is not None:
            for v in value:
                if (why := self.item.problem(v)) is not None:
                    return f"has an item {v!r} that {why}"
        return None

    def _in_range(self, value) -> bool:
        if self.type not in (int, float):
            return True
        return (
            (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
            and (self.above is None or value > self.above)
            and (self.below is None or value < self.below)
        )

    def kind(self) -> str:
        """The type in words."""
        if self.pattern is not None:
            return f"a string matching {self.pattern}"
        words = {
            bool: "true or false",
            int: "an integer",
            float: "a number",
            str: "a string",
            tuple: "a tuple",
        }[self.type]
        return words + (" or None" if self.none else "")

    def range(self) -> str:
        """The values allowed, in words."""
        parts = [
            f">= {self.low:g}" if self.low is not None else "",
            f"> {self.above:g}" if self.above is not None else "",
            f"<= {self.high:g}" if self.high is not None else "",
            f"< {self.below:g}" if self.below is not None else "",
            f"not {', '.join(map(str, self.not_equal))}" if self.not_equal else "",
        ]
        if self.choices:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        return " and ".join(p for p in parts if p)


def Bool(meaning: str, **kw) -> Key:
    return Key(meaning, bool, **kw)


def Int(meaning: str, **kw) -> Key:
    return Key(meaning, int, **kw)


def Float(meaning: str, **kw) -> Key:
    return Key(meaning, float, **kw)


def Str(meaning: str, **kw) -> Key:
    return Key(meaning, str, **kw)


def Tuple(meaning: str, **kw) -> Key:
    return Key(meaning, tuple, **kw)


@dataclasses.dataclass(frozen=True)
class Rule:
    """A rule across keys: `holds(*values of keys)` must be true; `says` is the rule in words."""

    keys: tuple[str, ...]
    holds: Callable[..., bool]
    says: str


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _has(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def flat_keys(config, prefix: str = "") -> list[str]:
    """Every leaf key of a nested mapping in dotted form, e.g. `optim.peak_lr`."""
    keys = []
    for key, value in config.items():
        if hasattr(value, "items"):
            keys.extend(flat_keys(value, f"{prefix}{key}."))
        else:
            keys.append(prefix + key)
    return keys


@dataclasses.dataclass(frozen=True)
class Schema:
    """The keys of one kind of config (dotted key -> Key) and its rules across keys."""

    keys: dict[str, Key]
    rules: tuple[Rule, ...] = ()
    source: str = "the config"  # where its keys are declared, for messages

    def check(self, config) -> None:
        """UserError naming every key whose value is wrong (type, range, choices), a key the
        schema does not know, or else every broken rule; one line."""
        unknown = [k for k in flat_keys(config) if k not in self.keys]
        if unknown:
            raise UserError(
                f"the config has key(s) bertjax does not read: {', '.join(unknown)} "
                f"(the keys are those of {self.source})"
            )
        errors = [
            f"{k}={_get(config, k)!r} {why} ({key.meaning})"
            for k, key in self.keys.items()
            if _has(config, k) and (why := key.problem(_get(config, k))) is not None
        ]
        if not errors:
            errors = [
                f"{rule.says} (" + ", ".join(f"{k}={_get(config, k)!r}" for k in rule.keys) + ")"
                for rule in self.rules
                if all(_has(config, k) for k in rule.keys)
                and not rule.holds(*(_get(config, k) for k in rule.keys))
            ]
        if errors:
            raise UserError("; ".join(errors))

    def changed_on_resume(self, config, saved: dict) -> list[str]:
        """The keys marked fixed_on_resume whose value in `config` differs from `saved` (the
        config of the checkpoint a resumed run starts from), as "key: saved -> now"."""
        changed = []
        for k, key in self.keys.items():
            if key.fixed_on_resume and _has(config, k) and _has(saved, k):
                before, now = _get(saved, k), _get(config, k)
                if before != now and not (isinstance(now, tuple) and list(now) == before):
                    changed.append(f"{k}: {before!r} in the checkpoint, {now!r} now")
        return changed

    def describe(self) -> str:
        """Every key it covers, one line each: key, type, allowed values, meaning."""
        lines = []
        for k, key in self.keys.items():
            facts = [key.kind(), key.range(), "fixed on resume" if key.fixed_on_resume else ""]
            lines.append(f"{k}  {', '.join(f for f in facts if f)}: {key.meaning}")
        return "\n".join(lines)
