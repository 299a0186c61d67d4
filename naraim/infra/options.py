"""Config sections defined once: each key's default and what it means, next to the code it configures.

A section is a mapping {key: Option(default, help)}, nested mappings being subsections. `section()` makes
its ConfigDict (what config files start from and the command line overrides); `helps()` gives docs/configs.md
every key's meaning from the same definition.
"""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from ml_collections import ConfigDict, config_dict


@dataclasses.dataclass(frozen=True)
class Option:
    """A config key's default and its meaning (one line, for docs/configs.md and --help readers). An
    optional key (unset: None) names the type a value must have in `kind`."""

    default: Any
    help: str
    kind: type | None = None


Definition = Mapping[str, "Option | Definition"]


def section(definition: Definition, keys: Iterable[str] | None = None, **defaults: Any) -> ConfigDict:
    """The ConfigDict of `definition`'s defaults: only `keys` (in their order) if given, and `defaults`
    replacing some (another entry point's defaults for the same keys)."""
    names = list(definition) if keys is None else list(keys)
    unknown = set(defaults) - set(names)
    if unknown:
        raise KeyError(f"no such option(s) {sorted(unknown)} in this section")
    out = ConfigDict()
    for name in names:
        entry = definition[name]
        if isinstance(entry, Option) and entry.kind is not None and name not in defaults:
            out[name] = config_dict.placeholder(entry.kind)
        elif isinstance(entry, Option):
            out[name] = defaults.get(name, entry.default)
        else:
            out[name] = section(entry)
    return out


def helps(definition: Definition, prefix: str = "") -> dict[str, str]:
    """{dotted key: help} of every option of `definition` (keys prefixed by `prefix`)."""
    out = {}
    for name, entry in definition.items():
        if isinstance(entry, Option):
            out[prefix + name] = entry.help
        else:
            out.update(helps(entry, f"{prefix}{name}."))
    return out


def _plain(value):
    return tuple(_plain(v) for v in value) if isinstance(value, list | tuple) else value


def overlay(base: ConfigDict, overrides) -> ConfigDict:
    """A copy of `base` with the non-None leaves of `overrides` (a ConfigDict or mapping) laid over it; JSON
    lists become tuples. Keys that `base` lacks are added."""
    out = ConfigDict(base.to_dict())
    for key, value in dict(overrides).items():
        if isinstance(value, ConfigDict | dict):
            out[key] = overlay(out[key] if key in out else ConfigDict(), value)
        elif value is not None:
            out[key] = _plain(value)
    return out
