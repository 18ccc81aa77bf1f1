"""Regenerates the README's generated sections (``make docs``); a test keeps them current."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from dlspec.diagnostics import CODES
from dlspec.layers.reference import reference_markdown


def codes_markdown() -> str:
    rows = ["| code | meaning |", "|---|---|"]
    rows += [f"| `{code}` | {title} |" for code, title in CODES.items()]
    return "\n".join(rows) + "\n"


SECTIONS = {"codes": codes_markdown, "layers": reference_markdown}


def render(readme: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name}[^>]*-->\n)(.*?)(<!-- END {name} -->)", re.S)
        match = pattern.search(readme)
        if match is not None:
            readme = readme[: match.start(2)] + make() + readme[match.end(2) :]
    return readme


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
