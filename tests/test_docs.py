"""The README and docs/ hold together: links resolve, cited sections exist, the example is the real one."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
MARKDOWN = [README, *PAGES]
CITING = [REPO / d for d in ("src", "bench", "configs", "examples", "jobscripts")]
README_MAX_LINES = 300  # the README points to docs/; the detail lives there

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CITATION = re.compile(r'docs/([\w.-]+\.md),\s+((?:\\?"[^"\\]+\\?"(?:,\s+|\s+and\s+|\s+or\s+)?)+)')


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """The fragments a renderer gives the page's headings (GitHub's rule, -1, -2 for repeats)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = "".join(c for c in m[1].lower() if c.isalnum() or c in "-_ ").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _headings(page: Path) -> set[str]:
    return {m[1].strip() for m in re.finditer(r"^#{1,6}\s+(.*)$", _FENCE.sub("", page.read_text()), re.M)}


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_files_and_headings_that_exist(page):
    broken = []
    for target in _LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(REPO) if REPO in resolved.parents else resolved}")
        elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{fragment} in {resolved.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def _citations():
    files = [p for d in CITING for p in d.rglob("*") if p.suffix in (".py", ".yaml", ".md", ".sh", ".sbatch")]
    for path in [*files, *MARKDOWN]:
        text = _prose(path.read_text()) if path.suffix == ".md" else path.read_text()
        for m in _CITATION.finditer(text):
            for heading in re.findall(r'\\?"([^"\\]+)\\?"', m[2]):
                yield path, m[1], " ".join(heading.split())


def test_cited_sections_exist():
    missing = [f"{path.relative_to(REPO)}: docs/{page}, \"{heading}\""
               for path, page, heading in _citations()
               if not (REPO / "docs" / page).is_file() or heading not in _headings(REPO / "docs" / page)]
    assert not missing, "citations of sections that docs/ does not have:\n" + "\n".join(missing)


def test_citation_pattern_finds_citations():
    text = 'see docs/algorithm.md, "Byte accounting" and "The paper\'s\n experiments"; docs/log.md'
    found = [(m[1], re.findall(r'\\?"([^"\\]+)\\?"', m[2])) for m in _CITATION.finditer(text)]
    assert found == [("algorithm.md", ["Byte accounting", "The paper's\n experiments"])]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _LINK.findall(_prose(README.read_text()))}
    unlinked = [p.name for p in PAGES if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_readme_example_is_the_runnable_example():
    """The README's API snippet is, line for line and in order, the loop of examples/own_loop.py."""
    readme = README.read_text()
    snippet = re.search(r"^## Use FDA from your own training script\n.*?^```python\n(.*?)^```", readme, re.S | re.M)
    assert snippet, "README: no python block under 'Use FDA from your own training script'"
    example = (REPO / "examples" / "own_loop.py").read_text().splitlines()
    position = 0
    for line in snippet[1].splitlines():
        if line.startswith("import"):
            continue  # the example imports one module per line
        assert line in example[position:], f"README snippet line not in examples/own_loop.py (in order): {line!r}"
        position = example.index(line, position) + 1
    assert ".item()" not in snippet[1], "the README's loop must not read the loss on the host every step"


def test_readme_commands_are_make_targets():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    commands = set(re.findall(r"^make ([\w-]+)", README.read_text(), re.M))
    assert commands, "README: no make command found"
    assert commands <= targets, f"README names make targets the Makefile lacks: {sorted(commands - targets)}"


def test_readme_stays_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail "
                                       "into docs/ and link to it")
