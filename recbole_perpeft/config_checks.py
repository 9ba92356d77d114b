"""Checks of our config keys, driven by one table, run before anything is built.

Each entry names a key and what it allows; :func:`check_config` raises a
``ValueError`` naming the key, the allowed values and the value received.
Checks that need the data (``text_fields``, ``n_groups`` against the number of
training users) run where the data is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def check(self, value) -> bool:
        return value in self.values

    def describe(self) -> str:
        return f"one of {list(self.values)}"


@dataclass(frozen=True)
class SubsetOf:
    values: tuple

    def check(self, value) -> bool:
        return isinstance(value, (list, tuple)) and len(value) > 0 and set(value) <= set(self.values)

    def describe(self) -> str:
        return f"a non-empty list drawn from {list(self.values)}"


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int | None = None

    def check(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return value >= self.low and (self.high is None or value <= self.high)

    def describe(self) -> str:
        high = "" if self.high is None else f" and <= {self.high}"
        return f"an integer >= {self.low}{high}"


@dataclass(frozen=True)
class NumberRange:
    low: float
    high: float | None = None

    def check(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, Real):
            return False
        return value >= self.low and (self.high is None or value <= self.high)

    def describe(self) -> str:
        high = "" if self.high is None else f" and <= {self.high}"
        return f"a number >= {self.low}{high}"


@dataclass(frozen=True)
class IsBool:
    def check(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class ListOfStr:
    def check(self, value) -> bool:
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)

    def describe(self) -> str:
        return "a list of column names"


@dataclass(frozen=True)
class OptionalDict:
    def check(self, value) -> bool:
        return value is None or isinstance(value, dict)

    def describe(self) -> str:
        return "a mapping or None"


# key -> constraint, for the keys of our models (properties/model/*.yaml)
CONSTRAINTS = {
    "encoder": OneOf(("hf_text", "hf_clip", "open_clip")),
    "modalities": SubsetOf(("image", "text")),
    "text_fields": ListOfStr(),
    "text_max_length": IntRange(1),
    "encode_batch_size": IntRange(1),
    "text_length_buckets": IntRange(1),
    "encoder_random_init": OptionalDict(),
    "mm_weight": NumberRange(0.0),
    "loss_type": OneOf(("BCE",)),
    "hidden_size": IntRange(1),
    "n_layers": IntRange(1),
    "n_heads": IntRange(1),
    "MAX_ITEM_LIST_LENGTH": IntRange(1),
    "train_batch_size": IntRange(1),
    "train_window": OneOf(("last", "random")),
    "cache_frozen_layers": IsBool(),
    "epochs": IntRange(0),
    "peft_config": OptionalDict(),
    "n_groups": IntRange(1),
    "grouping": OneOf(("kmeans", "random")),
    "group_negatives": IsBool(),
    "global_epochs": IntRange(0),
}


def check_config(config, keys: list[str] | None = None) -> None:
    """Raise ``ValueError`` for the first key of ``config`` that breaks its constraint.

    Args:
        config (Config | dict): the RecBole config.
        keys (list[str] | None): keys to check; None checks every key of the table
            that ``config`` holds.
    """
    for key, constraint in CONSTRAINTS.items():
        if keys is not None and key not in keys:
            continue
        value = config[key] if key in config else None
        if value is None and not isinstance(constraint, OptionalDict):
            continue
        if not constraint.check(value):
            raise ValueError(f"`{key}`: expected {constraint.describe()}, got {value!r}.")
    modalities = (config["modalities"] if "modalities" in config else None) or []
    if "text" in modalities and "text_fields" in config and not config["text_fields"]:
        raise ValueError(
            "`text_fields`: the modality 'text' needs at least one column of the "
            f".item file, got {config['text_fields']!r}."
        )
    if keys is None or "encoder" in keys:
        from recbole_perpeft.encoders import check_encoder_config

        check_encoder_config(config)
    if "hidden_size" in config and "n_heads" in config:
        if config["hidden_size"] % config["n_heads"]:
            raise ValueError(
                f"`n_heads`: expected a divisor of hidden_size={config['hidden_size']}, "
                f"got {config['n_heads']}."
            )
