"""The training workload's configuration: the hyperparameters each model accepts and the training config
(``FLEET_HYPERPARAMETERS``, ``FLEET_TRAINING_CONFIG``, JSON objects), parsed into :class:`Settings`;
anything the workload cannot run with is a :class:`ConfigError` saying what is wrong."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

HYPERPARAMETERS_ENV = "FLEET_HYPERPARAMETERS"
TRAINING_CONFIG_ENV = "FLEET_TRAINING_CONFIG"


class ConfigError(ValueError):
    """Hyperparameters or training config the workload cannot run with: the run fails with this message."""


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, not {value!r}")
    return int(value)


def _float(name: str, value: Any, low: float, high: float, *, above_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {value!r}")
    if value < low or value > high or (above_low and value == low):
        bound = "above" if above_low else "at least"
        raise ConfigError(f"{name} must be {bound} {low} and at most {high}, not {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _optional_int(low: int, high: int) -> Callable[[str, Any], int | None]:
    return lambda name, value: None if value is None else _int(name, value, low, high)


Parser = Callable[[str, Any], Any]

#: Hyperparameters every model takes.
COMMON: dict[str, Parser] = {
    "model": lambda n, v: _choice(n, v, ("sgd", "hgb")),
    "epochs": lambda n, v: _int(n, v, 1, 1000),
}
#: Per model: accepted hyperparameters (passed to the estimator under the same name unless noted).
MODEL_HYPERPARAMETERS: dict[str, dict[str, Parser]] = {
    "sgd": {
        "alpha": lambda n, v: _float(n, v, 0.0, 10.0, above_low=True),
        # the constant step size (SGDClassifier's eta0 with learning_rate="constant"), default 0.001
        "learning_rate": lambda n, v: _float(n, v, 0.0, 10.0, above_low=True),
        "penalty": lambda n, v: _choice(n, v, ("l2", "l1", "elasticnet")),
        "l1_ratio": lambda n, v: _float(n, v, 0.0, 1.0),
    },
    "hgb": {
        "learning_rate": lambda n, v: _float(n, v, 0.0, 10.0, above_low=True),
        "max_depth": _optional_int(1, 64),
        # total trees, grown in `epochs` equal parts
        "max_iter": lambda n, v: _int(n, v, 1, 10_000),
        "max_leaf_nodes": lambda n, v: _int(n, v, 2, 4096),
        "min_samples_leaf": lambda n, v: _int(n, v, 1, 100_000),
        "l2_regularization": lambda n, v: _float(n, v, 0.0, 1e6),
    },
}
TRAINING_CONFIG: dict[str, Parser] = {
    "rows": lambda n, v: _int(n, v, 200, 5_000_000),
    "seed": lambda n, v: _int(n, v, 0, 2**32 - 1),
    "val_fraction": lambda n, v: _float(n, v, 0.05, 0.5),
    "step_sleep_s": lambda n, v: _float(n, v, 0.0, 3600.0),
    "fail_at_step": lambda n, v: _int(n, v, 1, 1000),
}
DEFAULT_ROWS = 20_000
DEFAULT_EPOCHS = 10
DEFAULT_HGB_TREES = 100
DEFAULT_SGD_LEARNING_RATE = 0.001


def accepted_hyperparameters(model: str) -> list[str]:
    """The hyperparameter names ``model`` accepts, sorted (shown when a run is given another)."""
    return sorted({*COMMON, *MODEL_HYPERPARAMETERS[model]})


@dataclass(frozen=True)
class Settings:
    """One run's parsed configuration."""

    model: str
    epochs: int
    #: The model's hyperparameters as given (validated), without ``model`` and ``epochs``.
    params: dict[str, Any] = field(default_factory=dict)
    rows: int = DEFAULT_ROWS
    seed: int = 0
    val_fraction: float = 0.2
    step_sleep_s: float = 0.0
    fail_at_step: int | None = None
    #: training_config keys this workload does not know (ignored, with a warning).
    ignored: tuple[str, ...] = ()


def _json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, not {type(value).__name__}")
    return value


def default_seed(job_id: str) -> int:
    """The seed when training_config gives none: stable per job, so a retried run sees the same data."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big")


def settings_from_env(env: Mapping[str, str], job_id: str) -> Settings:
    """Parse ``FLEET_HYPERPARAMETERS`` and ``FLEET_TRAINING_CONFIG``; ConfigError says what is wrong."""
    hyper = _json_object(env, HYPERPARAMETERS_ENV)
    config = _json_object(env, TRAINING_CONFIG_ENV)

    model = COMMON["model"]("model", hyper.get("model", "sgd"))
    accepted = {**COMMON, **MODEL_HYPERPARAMETERS[model]}
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        others = [
            f"{name} needs model {other!r}"
            for name in unknown
            for other, names in MODEL_HYPERPARAMETERS.items()
            if other != model and name in names
        ]
        hint = f" ({'; '.join(others)})" if others else ""
        raise ConfigError(
            f"unknown hyperparameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for model {model!r}; "
            f"accepted: {', '.join(accepted_hyperparameters(model))}{hint}"
        )
    values = {name: accepted[name](name, value) for name, value in hyper.items()}
    epochs: int = values.pop("epochs", DEFAULT_EPOCHS)
    values.pop("model", None)
    if model == "hgb" and values.get("max_iter", max(epochs, DEFAULT_HGB_TREES)) < epochs:
        raise ConfigError(f"max_iter ({values['max_iter']}) must be at least epochs ({epochs}): each step adds trees")

    settings: dict[str, Any] = {}
    for name, value in config.items():
        if name in TRAINING_CONFIG:
            settings[name] = TRAINING_CONFIG[name](f"training_config.{name}", value)
    fail_at = settings.get("fail_at_step")
    if fail_at is not None and fail_at > epochs:
        raise ConfigError(f"training_config.fail_at_step ({fail_at}) is beyond the last step ({epochs})")
    return Settings(
        model=model,
        epochs=epochs,
        params=values,
        rows=settings.get("rows", DEFAULT_ROWS),
        seed=settings.get("seed", default_seed(job_id)),
        val_fraction=settings.get("val_fraction", 0.2),
        step_sleep_s=settings.get("step_sleep_s", 0.0),
        fail_at_step=fail_at,
        ignored=tuple(sorted(set(config) - set(TRAINING_CONFIG))),
    )
