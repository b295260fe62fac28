"""Reading a configuration: YAML files (safe types, no duplicate keys, no alias bombs), the ready configs shipped
in the package, dotted command-line overrides, and every validation error as one message naming the key.

The schema it fills is `config.py`; `load_config` is the one way in. No ML imports here either.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .config import Config, _coerce_source, is_local_path
from .errors import ConfigError, UserError
from .redaction import redact

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"  # the ready configs, shipped in the package


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p in ("function-after", "function-before")))


def _format_pydantic(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = _format_loc(e["loc"])
        kind = e["type"]
        if kind == "extra_forbidden":
            problems.append(f"{loc}: unknown key{_suggest(loc)}")
        elif kind == "missing":
            problems.append(f"{loc}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            problems.append(f"{loc or '(top level)'}: {msg}{got_s}")
    return problems


def _known_keys(section: str | None) -> list[str]:
    if section is None:
        return list(Config.model_fields)
    field = Config.model_fields.get(section)
    if field is None:
        return []
    return list(field.annotation.model_fields)  # type: ignore[union-attr]


def _suggest(loc: str) -> str:
    parts = loc.split(".")
    section = parts[0] if len(parts) > 1 else None
    known = _known_keys(section)
    close = difflib.get_close_matches(parts[-1], known, n=1)
    return f"; did you mean '{close[0]}'?" if close else (f"; known keys: {', '.join(known)}" if known else "")


MAX_YAML_NODES = 100_000  # values in a config once aliases are expanded: far above any real config, far below a bomb


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (a second `train:` would silently drop the
    first)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base constructor names it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (first on line {first.line + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(obj, limit: int) -> int:
    """How many values `obj` holds with every alias expanded, counting no further than `limit` (an alias bomb is
    tiny as loaded, since aliases share objects, and explodes when the config is validated or written out)."""
    n, stack = 0, [obj]
    while stack and n <= limit:
        x = stack.pop()
        n += 1
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return n


def safe_yaml(text: str):
    """YAML text as data: safe types only, no duplicate keys, at most MAX_YAML_NODES values with aliases expanded."""
    data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    if _expanded_size(data, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise yaml.YAMLError(
            f"more than {MAX_YAML_NODES} values once its aliases (*name) are expanded; a config "
            f"is far smaller: remove the nested aliases"
        )
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError([f"override {item!r}: expected key=value, e.g. train.learning_rate=1e-4"], "command line")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError([f"override {item!r}: {key!r} is not a dotted key like train.max_steps"], "command line")
    try:
        value = safe_yaml(raw) if raw.strip() else ""
    except yaml.constructor.ConstructorError as e:  # a duplicate key inside {...}
        raise ConfigError([f"override {key}: {e.problem}"], "command line") from None
    except yaml.YAMLError as e:
        if "aliases" in str(e):
            raise ConfigError([f"override {key}: {e}"], "command line") from None
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    problems = []
    for item in overrides or []:
        try:
            path, value = parse_override(item)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        node = data
        for i, p in enumerate(path[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                if isinstance(child, str) and p in ("train", "validation", "test"):
                    # data.train=path then data.train.limit=10: expand the short form
                    child = node[p] = _coerce_source(child)
                else:
                    problems.append(f"{'.'.join(path[: i + 1])}: is not a section, cannot set {'.'.join(path)}")
                    break
            node = child
        else:
            node[path[-1]] = value
    if problems:
        raise ConfigError(problems, "command line")
    return data


def shipped_configs() -> dict[str, Path]:
    """The ready configs by name (demo, default, ...): the YAML files shipped in the package."""
    return {p.stem: p for p in sorted(CONFIGS_DIR.glob("*.yaml"))}


def config_description(path: Path) -> str:
    """A shipped config's first comment line: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A config file: an existing path wins; else the name of a shipped config (`demo`, `demo.yaml`)."""
    p = Path(os.path.expanduser(str(name)))
    if p.exists():
        return p
    shipped = shipped_configs()
    stem = p.name[: -len(p.suffix)] if p.suffix in (".yaml", ".yml") else p.name
    if str(name) in (stem, p.name) and stem in shipped:
        return shipped[stem]
    if p.parent.name == "configs" and stem in shipped:  # configs/demo.yaml from before the configs moved
        return shipped[stem]
    raise UserError(
        f"config file not found: {name}. Ready configs (by name, e.g. --config demo): "
        f"{', '.join(shipped)}; list them with `llm-summarizer configs`."
    )


def read_yaml(path: str | os.PathLike) -> dict:
    p = resolve_config_path(path)
    if p.is_dir():
        raise UserError(f"config path is a directory, expected a YAML file: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"config file {p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"config file {p} cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        data = safe_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = (
            "YAML syntax error: "
            if isinstance(e, yaml.MarkedYAMLError) and not isinstance(e, yaml.constructor.ConstructorError)
            else ""
        )
        raise UserError(f"config file {p}{where}: {kind}{problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {p}: expected a mapping of sections (model:, lora:, data:, ...), got {type(data).__name__}"
        )
    return data


def data_beside_config(data: dict, config_file: Path) -> dict:
    """Relative data paths in a config file name files under the current directory, or, where there is no such
    file, under the config file's own folder: so a config and its data travel together, and the ready configs
    find the data shipped beside them in the package from any directory."""
    section = data.get("data") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        return data
    for split in ("train", "validation", "test"):
        spec = section.get(split)
        key = "path" if isinstance(spec, dict) else None
        path = spec.get("path") if isinstance(spec, dict) else spec
        if not isinstance(path, str) or os.path.isabs(os.path.expanduser(path)) or os.path.exists(path):
            continue
        beside = config_file.parent / path
        if not is_local_path(path) or not beside.exists():
            continue
        if key:
            spec[key] = os.path.abspath(beside)
        else:
            section[split] = os.path.abspath(beside)
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    data = data_beside_config(read_yaml(path), resolve_config_path(path)) if path else {}
    data = apply_overrides(data, overrides or [])
    source = str(resolve_config_path(path)) if path else "config"
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_pydantic(e), source) from None


def config_to_dict(cfg: Config) -> dict:
    return cfg.model_dump(mode="json")


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as saved (config.yaml of runs, models, exports) and printed: passwords in URLs
    (tune.storage, tracking.mlflow_tracking_uri) and secret values redacted."""
    return yaml.safe_dump(redact(config_to_dict(cfg)), sort_keys=False)
