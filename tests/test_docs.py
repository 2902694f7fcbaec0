"""The documentation keeps up with the code: every page a document links to exists, and every
module path a page names exists (a moved module must not leave the docs pointing at nothing).

The hooks and the settings keys have their own checks, beside the code they document:
``tests/test_plugins.py::test_every_hook_has_a_section_in_the_docs_and_a_test`` and
``tests/test_settings*.py::test_every_default_key_is_documented``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_links_and_module_paths_in_the_docs_exist() -> None:
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    assert len(pages) > 5
    broken: list[str] = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.name}: link {target}")
        for path in re.findall(r"`((?:composer_core|composer_plugins|tests|bench|scripts)/[\w/.-]+)`", text):
            if not (ROOT / path.rstrip("/")).exists():
                broken.append(f"{page.name}: path {path}")
    assert not broken, "\n".join(broken)
