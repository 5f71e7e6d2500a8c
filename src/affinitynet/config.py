"""Typed run configuration: one dataclass per pipeline section, YAML presets, ``--set section.key=value`` overrides."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path

import yaml

from .errors import ConfigError
from .settings import (  # the config's types, used as config.Config, config.DataConfig, ...
    CHOICES,
    SECTIONS,
    AffinityLabelConfig,
    AffinityNetConfig,
    BoundaryConfig,
    CamConfig,
    CocoOptions,
    Config,
    DataConfig,
    EvalConfig,
    FolderOptions,
    RandomWalkConfig,
    RelationLabelConfig,
    RuntimeConfig,
    SegmentationConfig,
    SyntheticOptions,
    VocOptions,
)

__all__ = ["AffinityLabelConfig", "AffinityNetConfig", "BoundaryConfig", "CHOICES", "CamConfig", "CocoOptions",
           "Config", "DataConfig", "EvalConfig", "FolderOptions", "PRESET_DIR", "RandomWalkConfig",
           "RelationLabelConfig", "RuntimeConfig", "SECTIONS", "SegmentationConfig", "SyntheticOptions", "VocOptions",
           "apply_overrides", "dump", "from_dict", "load", "resolve_config_path", "subset_hash"]


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotated type ``tp``; return it converted (int -> float, tuple -> list)."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (int, float, str, bool)) and not isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {item_tp.__name__}, got {value!r}")
        return [_coerce(v, item_tp, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def _apply(cfg: Config, section: str, key: str, value, where: str) -> None:
    """Set ``section.key`` (``key`` may be dotted into a sub-section, e.g. ``voc.mask_dir``); a mapping sets each of its keys."""
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section '{section}' (valid: {', '.join(SECTIONS)})")
    obj, path = cfg.section(section), section
    parts = key.split(".")
    for i, name in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if name not in fields:
            raise ConfigError(f"{where}: unknown key '{path}.{name}' (valid keys of {path}: {', '.join(fields)})")
        tp = typing.get_type_hints(type(obj))[name]
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:  # a whole sub-section given as a mapping
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: {path}.{name} must be a mapping of keys")
                for sub, v in value.items():
                    _apply(cfg, section, f"{key}.{sub}", v, where)
                return
            obj, path = getattr(obj, name), f"{path}.{name}"
            continue
        if i != len(parts) - 1:
            raise ConfigError(f"{where}: {path}.{name} is a value, not a section")
        value = _coerce(value, tp, f"{where}: {path}.{name}")
        allowed = CHOICES.get(f"{path}.{name}")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{where}: {path}.{name}: expected one of {', '.join(allowed)}, got {value!r}")
        setattr(obj, name, value)


def from_dict(d: dict, where: str = "config") -> Config:
    """Build a Config from a nested dict, checking every key and type."""
    cfg = Config()
    if d is None:
        return cfg
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(d).__name__}")
    for section, values in d.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section '{section}' (valid: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of keys")
        for key, value in values.items():
            _apply(cfg, section, key, value, where)
    return cfg


PRESET_DIR = Path(__file__).resolve().parent / "configs"


def resolve_config_path(spec: str) -> Path:
    """A config file path, or the name of a built-in preset (``synthetic_cpu``, ``voc12_resnet38``, ...)."""
    p = Path(spec)
    if p.exists():
        return p
    preset = PRESET_DIR / (spec if spec.endswith(".yaml") else f"{spec}.yaml")
    if preset.exists():
        return preset
    names = ", ".join(sorted(x.stem for x in PRESET_DIR.glob("*.yaml")))
    raise ConfigError(f"{spec}: config file not found (built-in presets: {names})")


def load(path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML preset and apply ``section.key=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    cfg = from_dict(d, where=str(path))
    apply_overrides(cfg, overrides)
    return cfg


def apply_overrides(cfg: Config, overrides) -> Config:
    """Apply ``section.key=value`` strings in order; a bad key or value is a ConfigError listing valid keys."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _apply(cfg, section.strip(), key.strip(), value, f"--set {item}")
    return cfg


def dump(cfg: Config) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# Keys added after runs were made, each with the value that does exactly what those runs did. A stage's
# identity leaves such a key out while it holds that value, so a finished run stays finished after an upgrade
# (a new dataset option must not retrain a classifier); any other value enters the identity as usual.
LATER_KEYS = {"data.synthetic.style": "parts", "cam.import_dir": "", "affinitynet.embed_stride": 0,
              "affinitynet.fine_depth": False, "random_walk.choose_alpha": False,
              "random_walk.alpha_candidates": RandomWalkConfig().alpha_candidates}


def _drop(d: dict, dotted: str, value) -> None:
    """Remove ``d[a][b]...`` for the dotted path ``a.b...`` when it exists and equals ``value``."""
    *parents, last = dotted.split(".")
    for key in parents:
        d = d.get(key) if isinstance(d, dict) else None
        if d is None:
            return
    if isinstance(d, dict) and last in d and d[last] == value:
        del d[last]


def subset_hash(cfg: Config, sections: tuple[str, ...], exclude: tuple[str, ...] = ()) -> str:
    """sha256 over the named sections (or ``section.key`` entries), minus ``exclude`` and the ``LATER_KEYS`` at
    their earlier behaviour; 16 hex digits."""
    d = cfg.to_dict()
    picked: dict = {}
    for s in sections:
        if "." in s:
            sec, key = s.split(".", 1)
            picked.setdefault(sec, {})[key] = d[sec][key]
        else:
            picked[s] = json.loads(json.dumps(d[s]))  # a deep copy: exclusions must not touch cfg
    for e in exclude:
        sec, key = e.split(".", 1)
        picked.get(sec, {}).pop(key, None)
    for dotted, value in LATER_KEYS.items():
        _drop(picked, dotted, value)
    blob = json.dumps(picked, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
