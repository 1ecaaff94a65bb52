"""A run config from a YAML file: the packaged default, a packaged `pkg:` config or a file,
`--set` overrides applied, a named task's `task:` section turned into `data`, `prompt` and
`generate` (`data.tasks.fill_task`), validated, and data paths made relative to the file."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from cuetune.config import RunConfig, apply_overrides, parse_mapping, validate
from cuetune.data.tasks import fill_task
from cuetune.errors import ConfigError


def as_config(config) -> RunConfig:
    """A RunConfig from a RunConfig, a raw mapping, a YAML path, or None (the packaged default)."""
    if isinstance(config, RunConfig):
        return config
    if config is None or isinstance(config, str | Path):
        return load(config)
    if isinstance(config, dict):
        return validate(config)
    raise TypeError(f"config must be a RunConfig, dict or YAML path, not {type(config).__name__}")


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the packaged default when `path` is None) and apply overrides."""
    if path is None:
        text = files("cuetune.resources").joinpath("default.yaml").read_text()
        source = "default config"
        base_dir = None
    elif str(path).startswith("pkg:"):  # a config shipped with cuetune, e.g. pkg:data2text.yaml
        packaged = files("cuetune.resources").joinpath(str(path)[4:])
        if not packaged.is_file():
            raise ConfigError(f"{path}: no such packaged config; shipped: default.yaml, data2text.yaml")
        text, source, base_dir = packaged.read_text(encoding="utf-8"), str(path), None
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        text = p.read_text(encoding="utf-8")
        source = str(p)
        base_dir = p.parent
    raw = apply_overrides(parse_mapping(text, source), overrides or [])
    cfg = validate(fill_task(raw, base_dir, source), source)
    return resolve_paths(cfg, base_dir)


def resolve_paths(cfg: RunConfig, base_dir: Path | None) -> RunConfig:
    """Data paths in a config file are relative to that file; `pkg:` names packaged data."""
    updates = {}
    for key in ("train", "dev", "test"):
        value = getattr(cfg.data, key)
        if value is None or cfg.data.dataset:
            continue
        if value.startswith("pkg:"):
            updates[key] = str(files("cuetune.resources").joinpath(value[4:]))
        elif base_dir is not None and not Path(value).is_absolute():
            candidate = base_dir / value
            if candidate.exists() or not Path(value).exists():
                updates[key] = str(candidate)
    if updates:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
    return cfg
