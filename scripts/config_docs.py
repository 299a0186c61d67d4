"""Write docs/configs.md from the config definitions (every key, default and comment).

python scripts/config_docs.py [--check]   # --check: exit 1 if the page is not current
"""

import os

from naraim.cli import ArgumentParser, run_main
from naraim.config_docs import ROOT, render
from naraim.errors import UserError

PAGE = os.path.join(ROOT, "docs", "configs.md")


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that docs/configs.md is current")
    args = parser.parse_args()
    text = render() + "\n"
    if args.check:
        current = open(PAGE).read() if os.path.exists(PAGE) else ""
        if current != text:
            raise UserError(f"{PAGE} is not current: run python scripts/config_docs.py")
        print(f"{PAGE} is current")
        return
    with open(PAGE, "w") as f:
        f.write(text)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    run_main(main)
