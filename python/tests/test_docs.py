"""The documentation's Python runs: every ```python block of README.md and docs/ executes, on the
tiny fixture in place of the hub's models, a page's blocks in order in one namespace."""
import re

import pytest

from conftest import ROOT, TINY

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
HUB = re.compile(r"""pb\.load\((["'])(gpt2|[\w-]+/[\w.-]+)\1""")


def blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_the_docs_hold_python_examples():
    assert sum(len(blocks(p)) for p in PAGES) >= 1


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_example_in_the_docs_runs(page):
    namespace = {}
    for code in blocks(page):
        exec(compile(HUB.sub(f"pb.load({str(TINY)!r}", code), str(page), "exec"), namespace)  # noqa: S102 - the docs' own code
