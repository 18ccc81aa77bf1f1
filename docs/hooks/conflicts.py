"""mkdocs hook: a page holding a merge's conflict markers fails the build."""

from __future__ import annotations

from typing import Any

from mkdocs.exceptions import PluginError

from dlspec.docs import conflict_markers


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    lines = conflict_markers(markdown)
    if lines:
        where = ", ".join(f"{page.file.src_path}:{line}" for line in lines)
        raise PluginError(f"merge conflict markers at {where}")
    return markdown
