"""Write docs/flags.md: every command-line flag, its default and the OptimizerConfig field it sets.

Usage: python tools/flags_table.py [OUTPUT]   (default: docs/flags.md next to this script's repo)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arguments.flags_doc import render_flags_markdown

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "flags.md"


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the flags table (docs/flags.md) from the current parser.")
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT, help="default: %(default)s")
    output = parser.parse_args().output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_flags_markdown(), encoding="utf-8")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
