"""Loading YAML configs into typed models, with errors that name the bad key.

Every run kind (pipeline, annotate, train) has a pydantic model with ``extra="forbid"``; a
default lives in the model and nowhere else (not in argparse, not in a builder).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from multishot.errors import UsageError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """The base of every config section (``configs/**/*.yaml``): a key the section does not
    declare is an error naming it, and so are ``.inf`` / ``.nan`` (a number that is not finite
    would only fail later, inside a run)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FrozenSection(Section):
    """A :class:`Section` whose values cannot change after loading (hashable: the pipeline hashes
    its settings into the samples' identity)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class ConfigError(UsageError, ValueError):
    """A config file is unreadable or does not validate; the message names each bad key (the
    CLI prints it as one line, exit 2)."""


def load_config(path: str | Path, model: type[M], overrides: dict | None = None) -> M:
    """Read YAML at ``path`` into ``model``; ``overrides`` (nested dict) win over the file.

    Raises:
        ConfigError: file missing, not YAML, a key given twice in one mapping, not a mapping,
            or a key is unknown / invalid (message: ``path: key.sub: reason`` per problem).
    """
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys, got {type(data).__name__}")
    _merge(data, overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = [
            f"  {'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        ]
        raise ConfigError(f"{path}: invalid config\n" + "\n".join(problems)) from None


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error: PyYAML keeps
    the last value silently, so an edit lower in a file would undo one above without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"key {key!r} given twice in one mapping (lines {seen[key]} and "
                                    f"{key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _merge(base: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def config_hash(config: BaseModel) -> str:
    """16 hex digits of sha256 over the whole config's canonical JSON (``pipeline.run.
    compute_samples_hash`` applies it to the settings that decide the samples)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def dump_yaml(config: BaseModel) -> str:
    """The resolved config as YAML, written next to a run's outputs."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
