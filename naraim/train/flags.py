"""Command-line config loading: `--config path.py[:variant]` plus `--config.a.b=value` overrides, errors as
one line."""

import os
import re

from absl import flags
from ml_collections import ConfigDict, config_flags

from naraim.errors import UserError


def define_config_flag(name: str = "config") -> flags.FlagHolder:
    """Defines the `--<name>` config-file flag (call once at import time of a script)."""
    return config_flags.DEFINE_config_file(
        name, None, "config file, optionally with :variant", lock_config=True
    )


def _unknown_override(argv: list[str], missing: str, flag: str) -> str:
    for arg in argv:
        m = re.match(rf"--{flag}\.([\w.]+)=?", arg)
        if m and m.group(1).split(".")[-1] == missing:
            return m.group(1)
    return missing


def parse_flags(argv: list[str], config_flag: flags.FlagHolder) -> ConfigDict:
    """Parses argv into absl flags and returns the resolved config; every user mistake becomes a UserError."""
    name = config_flag.name
    try:
        flags.FLAGS(argv)
    except flags.Error as e:
        raise UserError(f"{e} (see --helpfull)") from None
    except (AttributeError, KeyError) as e:
        key = _unknown_override(argv, str(e).strip("'\""), name)
        raise UserError(f"unknown config key {key!r}: check the spelling of --{name}.{key}") from None
    cfg = config_flag.value
    if cfg is None:
        raise UserError(f"no config given: pass --{name}=configs/<file>.py[:variant]")
    if not isinstance(cfg, ConfigDict):
        path = flags.FLAGS[name].config_filename if hasattr(flags.FLAGS[name], "config_filename") else ""
        if path and not os.path.exists(path):
            raise UserError(f"config file {path!r} not found: pass --{name}=configs/<file>.py[:variant]")
        raise UserError(f"cannot load the config: {getattr(cfg, '_error', cfg)}")
    return cfg
