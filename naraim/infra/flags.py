"""Command-line config loading: `--config path.py[:variant]` plus `--config.a.b=value` overrides; --help;
every user mistake as one line (with a 'did you mean' for a misspelt key)."""

import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from types import ModuleType

from absl import flags
from ml_collections import ConfigDict, config_flags

from naraim.errors import UserError

HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull")
RENAMED_KEYS = {"knn.k": "probe.knn_k"}  # old config key -> the key that replaced it


def define_config_flag(name: str = "config") -> flags.FlagHolder:
    """Defines the `--<name>` config-file flag (call once at import time of a script)."""
    return config_flags.DEFINE_config_file(
        name, None, "config file, optionally with :variant", lock_config=True
    )


def make_package_importable(path: str) -> None:
    """A config file inside a package (configs/__init__.py) imports its siblings (`from configs import
    common`): the folder above the package goes on sys.path."""
    folder = os.path.dirname(os.path.abspath(path))
    root = os.path.dirname(folder)
    if os.path.isfile(os.path.join(folder, "__init__.py")) and root not in sys.path:
        sys.path.insert(0, root)


def load_config_module(path: str) -> ModuleType:
    """The config file at `path` as a module (its get_config, its VARIANTS)."""
    if not os.path.exists(path):
        raise UserError(f"config file {path!r} not found")
    make_package_importable(path)
    module_spec = importlib.util.spec_from_file_location(f"naraim_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config_file(spec: str) -> ConfigDict:
    """get_config(variant) of a config file given as 'path.py[:variant]' (what --config takes)."""
    path, _, arg = spec.partition(":")
    return load_config_module(path).get_config(arg or None)


def flat_keys(cfg: ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf key of `cfg` as a dotted path."""
    out = []
    for key, value in cfg.items():
        if isinstance(value, ConfigDict):
            out.extend(flat_keys(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def _overrides(argv: list[str], flag: str) -> list[str]:
    """The dotted keys of the `--<flag>.a.b=value` arguments, in order."""
    return [m.group(1) for arg in argv if (m := re.match(rf"--{flag}\.([\w.]+)(=|$)", arg))]


def _unknown_key(
    argv: list[str], flag: str, error: Exception, keys: list[str], locked: dict[str, list[str]]
) -> str:
    """The one line for an override whose key the config does not have."""
    missing = re.findall(r"[\w.]+", str(error).split("\n")[0])
    candidates = [k for k in _overrides(argv, flag) if k not in keys]
    key = next(
        (k for k in candidates if missing and k.split(".")[-1] == missing[0]),
        candidates[0] if candidates else "?",
    )
    if key in RENAMED_KEYS:
        new = RENAMED_KEYS[key]
        return f"config key {key!r} is now {new!r} (a tuple of values): use --{flag}.{new}"
    section = key.rpartition(".")[0]
    if section in locked and key.split(".")[-1] in locked[section]:
        allowed = ", ".join(k for k in keys if k.startswith(section + "."))
        return (
            f"config key {key!r} may not be overridden here (it comes from the pre-training run); keys that "
            f"may: {allowed}"
        )
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]!r}?" if close else f": check the spelling of --{flag}.{key}"
    return f"unknown config key {key!r}{hint}"


def _config_path(argv: list[str], flag: str) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
        if arg == f"--{flag}" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def _print_help(
    argv: list[str],
    config_flag: flags.FlagHolder,
    default_config: Callable[[], ConfigDict] | None,
    locked: dict[str, list[str]] | None,
):
    """The script's docstring, its flags, and the config's keys with their values (the given config with
    its overrides, else the defaults); then exit 0. A bad key or value is reported as a run would."""
    cfg, source = None, ""
    if _config_path(argv, config_flag.name) and "--helpfull" not in argv:
        rest = [a for a in argv if a not in HELP_FLAGS]
        cfg, source = parse_flags(rest, config_flag, default_config, locked), " ".join(rest[1:])
    main = sys.modules["__main__"]
    print((main.__doc__ or "").strip() + "\n")
    if "--helpfull" in argv:
        print(flags.FLAGS.get_help())
        sys.exit(0)
    print("flags:")
    print(flags.FLAGS.module_help(main) or flags.FLAGS.main_module_help())
    if cfg is None and default_config is not None:
        cfg, source = default_config(), "the defaults"
    if isinstance(cfg, ConfigDict):
        print(f"\nconfig keys ({source}; override any with --{config_flag.name}.KEY=VALUE):")
        for key in flat_keys(cfg):
            value = cfg
            for part in key.split("."):
                value = value[part]
            print(f"  {key} = {value!r}")
    print("\n--helpfull lists the flags of every module. Every config key: docs/configs.md.")
    sys.exit(0)


def parse_flags(
    argv: list[str],
    config_flag: flags.FlagHolder,
    default_config: Callable[[], ConfigDict] | None = None,
    locked_sections: dict[str, list[str]] | None = None,
) -> ConfigDict:
    """Parses argv into absl flags and returns the resolved config; every user mistake becomes a UserError.

    --help / -h / --helpshort / --helpfull print help and exit 0 (default_config: the config shown when no
    --config is given). locked_sections: {section: keys that exist in the run but may not be overridden}.
    """
    name = config_flag.name
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        _print_help(argv, config_flag, default_config, locked_sections)
    path = _config_path(argv, name)
    file_part = path.split(":", 1)[0]
    if file_part and not os.path.exists(file_part):
        raise UserError(f"config file {file_part!r} not found: pass --{name}=configs/<file>.py[:variant]")
    if file_part:
        make_package_importable(file_part)
    try:
        flags.FLAGS(argv)
    except flags.Error as e:
        raise UserError(f"{str(e).splitlines()[0]} (see --help)") from None
    except (AttributeError, KeyError) as e:
        cfg = _load_without_overrides(argv, config_flag)
        keys = flat_keys(cfg) if isinstance(cfg, ConfigDict) else []
        raise UserError(_unknown_key(argv, name, e, keys, locked_sections or {})) from None
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        raise UserError(f"bad config override: {str(e).splitlines()[0]}") from None
    cfg = config_flag.value
    if cfg is None:
        raise UserError(f"no config given: pass --{name}=configs/<file>.py[:variant]")
    if not isinstance(cfg, ConfigDict):
        raise UserError(f"cannot load the config: {getattr(cfg, '_error', cfg)}")
    return cfg


def _load_without_overrides(argv: list[str], config_flag: flags.FlagHolder):
    """The config file's config before any override (to list the keys a misspelt override could mean)."""
    try:
        return load_config_file(_config_path(argv, config_flag.name))
    except Exception:  # the caller reports the original error
        return None
