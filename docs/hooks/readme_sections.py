"""MkDocs hook: ``{{ readme "Heading" }}`` in a page becomes that README section.

The README stays the one source of each part's text (several people edit its sections);
the site shows them one page per part without copying them. A missing heading fails the
build, so a renamed section cannot leave an empty page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"
DIRECTIVE = re.compile(r'\{\{ readme "([^"]+)" \}\}')
INCLUDE = re.compile(r'\{\{ include "([^"]+)" \}\}')
HEADING = re.compile(r"^(#{2,6}) (.+)$")


def readme_section(title: str) -> str:
    lines = README.read_text().splitlines()
    fence = False
    start = level = None
    for number, line in enumerate(lines):
        fence = fence != line.lstrip().startswith("```")
        match = None if fence or line.lstrip().startswith("```") else HEADING.match(line)
        if not match:
            continue
        if start is None and match.group(2).strip() == title:
            start, level = number, len(match.group(1))
        elif start is not None and level is not None and len(match.group(1)) <= level:
            return _shift("\n".join(lines[start + 1 : number]), level)
    if start is None or level is None:
        raise ValueError(f"README.md has no section {title!r}")
    return _shift("\n".join(lines[start + 1 :]), level)


def _shift(text: str, level: int) -> str:
    """Subsections one level up (the page title is the section), links into docs/ fixed."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and line.startswith("#" * (level + 1) + " "):
            line = line[level - 1 :]
        out.append(line.replace("](docs/", "]("))
    return "\n".join(out)


def include_file(name: str) -> str:
    """A file of the repository root without its title (CHANGELOG.md)."""
    text = (README.parent / name).read_text()
    return re.sub(r"\A# .*\n", "", text)


def slug(title: str) -> str:
    """The anchor MkDocs' toc (and GitHub) give a heading."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", ""))
    return re.sub(r"[-\s]+", "-", text)


def anchor_pages() -> dict[str, str]:
    """Anchor of every README heading -> the docs page that shows its section."""
    docs = README.parent / "docs"
    owner: dict[str, str] = {}
    for page in sorted(docs.glob("*.md")):
        for title in DIRECTIVE.findall(page.read_text()):
            owner[slug(title)] = page.name
            for line in readme_section(title).splitlines():
                match = HEADING.match(line)
                if match:
                    owner.setdefault(slug(match.group(2)), page.name)
    return owner


def _fix_anchor(match: re.Match[str], here: str, on_page: set[str]) -> str:
    anchor = match.group(1)
    page = anchor_pages().get(anchor)
    if anchor in on_page or page is None or page == here:
        return match.group(0)
    return f"]({page}#{anchor})"


def on_page_markdown(markdown: str, page: Any = None, **_: Any) -> str:
    markdown = INCLUDE.sub(lambda match: include_file(match.group(1)), markdown)
    markdown = DIRECTIVE.sub(lambda match: readme_section(match.group(1)), markdown)
    here = Path(page.file.src_path).name if page is not None else ""
    on_page = {slug(m.group(2)) for m in map(HEADING.match, markdown.splitlines()) if m}
    return re.sub(r"\]\(#([\w-]+)\)", lambda m: _fix_anchor(m, here, on_page), markdown)
