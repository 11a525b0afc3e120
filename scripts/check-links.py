#!/usr/bin/env python3
"""Checks the relative links of the project's Markdown files (scripts/lint.sh runs it).

For README.md, CONTRIBUTING.md, docs/*.md, deploy/*.md and tools/**/README.md, every relative link
[text](path), [text](path#anchor), [text](#anchor) and image ![alt](path) must point at a file or
folder that exists, and an #anchor into a Markdown file must match one of its headings, slugged as
GitHub slugs them. Links to http(s):// and mailto: are not checked. Links inside code (fenced
blocks and `inline code`) are not links and are skipped. README.md must also stay under
MAX_README_BYTES: it is a newcomer's first page, and the details belong in docs/.

Prints each broken link as `file:line: target (why)` and exits 1 if there is any; otherwise prints
one summary line. Python 3 standard library only.
"""

import re
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
MAX_README_BYTES = 20_000

# [text](target) or ![alt](target), with an optional "title"; text may hold one level of brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
SKIPPED_SCHEMES = ("http://", "https://", "mailto:")


def files_to_check():
    names = ["README.md", "CONTRIBUTING.md"]
    names += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
    names += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy").glob("*.md"))
    names += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tools").rglob("README.md"))
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def prose_lines(text):
    """Yields (line number, line) outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip()[len(m.group(1)) :].strip():
                fence = None
            continue
        yield number, line


def slug(heading):
    """GitHub's anchor for a heading: the text as rendered (no code ticks, links as their text),
    lowercased, punctuation dropped except '-' (letters, digits and '_' stay), spaces to '-'."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("`", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


_anchors = {}


def anchors(path):
    """The anchors of a Markdown file's headings, numbered as GitHub numbers repeats (-1, -2, …)."""
    if path not in _anchors:
        seen = {}
        found = set()
        for _, line in prose_lines(path.read_text(encoding="utf-8")):
            m = HEADING.match(line)
            if not m:
                continue
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        _anchors[path] = found
    return _anchors[path]


def check_file(path):
    """Returns (links checked, [(line, target, why)])."""
    checked, broken = 0, []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)
        for m in LINK.finditer(line):
            target = m.group(1)
            if not target or target.lower().startswith(SKIPPED_SCHEMES):
                continue
            checked += 1
            where, _, anchor = target.partition("#")
            dest = path if not where else (path.parent / unquote(where)).resolve()
            if not dest.exists():
                broken.append((number, target, "no such file"))
                continue
            try:
                dest.relative_to(ROOT)
            except ValueError:
                broken.append((number, target, "outside the repository"))
                continue
            if anchor:
                if dest.is_dir() or dest.suffix.lower() != ".md":
                    broken.append((number, target, "an anchor into something that is not a Markdown file"))
                elif unquote(anchor).lower() not in anchors(dest):
                    broken.append((number, target, f"no heading with this anchor in {dest.relative_to(ROOT)}"))
    return checked, broken


def main():
    files = files_to_check()
    checked, failures = 0, 0
    for path in files:
        n, broken = check_file(path)
        checked += n
        for number, target, why in broken:
            print(f"{path.relative_to(ROOT)}:{number}: {target} ({why})")
            failures += 1
    readme = ROOT / "README.md"
    size = readme.stat().st_size if readme.exists() else 0
    if size >= MAX_README_BYTES:
        print(f"README.md: {size:,} bytes; keep it under {MAX_README_BYTES:,} and move details into docs/")
        failures += 1
    if failures:
        print(f"check-links: {failures} problem(s) in {len(files)} files", file=sys.stderr)
        return 1
    print(f"check-links: OK, {checked} relative links in {len(files)} files; README.md {size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
