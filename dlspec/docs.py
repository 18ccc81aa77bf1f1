"""The manual's tooling (``make docs``): its pages in reading order, their generated sections
(the diagnostic codes and the layer reference, from the registry), and the check that no page
holds a merge's conflict markers. Tests keep the generated sections current and run every
page's commands."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from dlspec.diagnostics import CODES
from dlspec.layers.reference import reference_markdown

# a line that opens a conflict, starts diff3's base or closes it (the divider "=======" is
# also Markdown's heading underline; a conflict always has the others)
_MARKER = re.compile(r"^(<{7}|\|{7}|>{7})( |$)", re.M)


def codes_markdown() -> str:
    rows = ["| code | meaning |", "|---|---|"]
    rows += [f"| `{code}` | {title} |" for code, title in CODES.items()]
    return "\n".join(rows) + "\n"


SECTIONS = {"codes": codes_markdown, "layers": reference_markdown}


def render(page: str) -> str:
    """The page with its generated sections (between ``<!-- BEGIN name -->`` and
    ``<!-- END name -->``) made anew."""
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name}[^>]*-->\n)(.*?)(<!-- END {name} -->)", re.S)
        match = pattern.search(page)
        if match is not None:
            page = page[: match.start(2)] + make() + page[match.end(2) :]
    return page


def manual_pages(root: Path) -> list[Path]:
    """The manual in reading order: the pages under docs/ as mkdocs.yml's nav lists them,
    then the README (the front page, whose tour repeats commands of the pages)."""
    nav = (root / "mkdocs.yml").read_text(encoding="utf-8")
    names = re.findall(r"^\s*- [^:\n]+: (\S+\.md)\s*$", nav, re.M)
    return [root / "docs" / name for name in names] + [root / "README.md"]


def conflict_markers(text: str) -> list[int]:
    """The 1-based lines of merge-conflict markers in ``text``."""
    return [text.count("\n", 0, m.start()) + 1 for m in _MARKER.finditer(text)]


def main() -> int:
    for name in sys.argv[1:] or ["README.md"]:
        path = Path(name)
        path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
