"""ViT sizes by name: "<size>/<patch>" (e.g. "B/14", "L/16") and AIM ("AIM-0.6B" .. "AIM-7B", patch 14)."""

from naraim.errors import UserError

# width, depth, heads, mlp_dim. ViT sizes from Dosovitskiy et al. / big_vision; AIM sizes from El-Nouby et al.
# "Pico" is a tiny size for tests and CPU demos, "Nano" a smaller one for golden-value tests.
SIZES: dict[str, dict[str, int]] = {
    "Nano": dict(width=16, depth=2, heads=2, mlp_dim=32),
    "Pico": dict(width=64, depth=2, heads=4, mlp_dim=256),
    "Ti": dict(width=192, depth=12, heads=3, mlp_dim=768),
    "Mi6": dict(width=128, depth=6, heads=4, mlp_dim=512),  # a 6-block width-128 ViT for CPU studies
    "Mi4": dict(width=128, depth=4, heads=4, mlp_dim=512),  # CPU-sized runs beside the NARAIM reference
    "Ti6": dict(
        width=192, depth=6, heads=3, mlp_dim=768
    ),  # 6-block ViT-Ti: the CPU study recipe (configs/small.py)
    "S": dict(width=384, depth=12, heads=6, mlp_dim=1536),
    "S6": dict(width=384, depth=6, heads=6, mlp_dim=1536),  # 6-block ViT-S: the CPU training benchmark shape
    "M": dict(width=512, depth=12, heads=8, mlp_dim=2048),
    "B": dict(width=768, depth=12, heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, heads=16, mlp_dim=4096),
    "H": dict(width=1280, depth=32, heads=16, mlp_dim=5120),
    "AIM-0.6B": dict(width=1536, depth=24, heads=12, mlp_dim=6144),
    "AIM-1B": dict(width=2048, depth=24, heads=16, mlp_dim=8192),
    "AIM-3B": dict(width=3072, depth=24, heads=24, mlp_dim=12288),
    "AIM-7B": dict(width=4096, depth=32, heads=32, mlp_dim=16384),
}
AIM_PATCH = 14


def _split(variant: str) -> tuple[str, int]:
    """Parses "B/14" -> ("B", 14); "AIM-1B" -> ("AIM-1B", 14)."""
    name, sep, patch = variant.partition("/")
    if name not in SIZES:
        raise UserError(
            f"unknown model.variant {variant!r}: use '<size>/<patch>' with size in {sorted(SIZES)}"
        )
    if not sep:
        if name.startswith("AIM-"):
            return name, AIM_PATCH
        raise UserError(
            f"model.variant {variant!r} has no patch size: write it as '{name}/<patch>', e.g. '{name}/14'"
        )
    if not patch.isdigit() or int(patch) < 1:
        raise UserError(f"model.variant {variant!r}: the patch size after '/' must be a positive integer")
    return name, int(patch)


def get_size(variant: str) -> dict[str, int]:
    """Returns dict(width, depth, heads, mlp_dim, patch) for a variant name such as "B/14" or "AIM-0.6B"."""
    name, patch = _split(variant)
    return dict(SIZES[name], patch=patch)


def patch_size(variant: str) -> int:
    """Returns the patch side P in pixels of a variant name ("B/14" -> 14)."""
    return _split(variant)[1]
