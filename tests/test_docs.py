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


def _documented_exit_codes() -> dict[int, str]:
    """The rows of README's "Exit codes" table: code -> meaning."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, flags=re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def _error_classes() -> list[type]:
    """Every ComposerError subclass the package defines, wherever it lives (errors.py and the
    modules that keep a stage's own error beside it, such as the pass lock)."""
    import importlib
    import pkgutil

    import composer_core
    from composer_core.errors import ComposerError

    for module in pkgutil.walk_packages(composer_core.__path__, "composer_core."):
        if not module.name.endswith(".__main__"):  # running it is the command line
            importlib.import_module(module.name)
    found: list[type] = []
    pending: list[type] = [ComposerError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__.startswith("composer_core")]


def _cli_exit_codes() -> set[int]:
    """The codes the command line's last line of defence returns by itself (success, internal
    error, interruption): integer literals handed to ``sys.exit`` or ``_report`` in cli/__init__.py."""
    import ast

    tree = ast.parse((ROOT / "composer_core" / "cli" / "__init__.py").read_text())
    codes: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("exit", "_report"):
            continue
        codes.update(arg.value for arg in node.args
                     if isinstance(arg, ast.Constant) and type(arg.value) is int)
    return codes


def test_the_readme_exit_codes_are_the_codes_of_the_errors_and_the_cli() -> None:
    documented = _documented_exit_codes()
    classes = _error_classes()
    by_class = {cls.__name__: cls.exit_code for cls in classes}  # type: ignore[attr-defined]
    cli_codes = _cli_exit_codes()
    # the parsers found what they look for, so the comparison below cannot pass on empty sets
    assert {"ComposerError", "ApplyFailed", "PassLockError"} <= set(by_class)
    assert {0, 70} <= cli_codes

    undocumented = {name: code for name, code in by_class.items() if code not in documented}
    assert not undocumented, f"exit codes missing from README's table: {undocumented}"
    unused = set(documented) - set(by_class.values()) - cli_codes
    assert not unused, f"README documents exit codes nothing returns: {sorted(unused)}"
    assert not cli_codes - set(documented), (
        f"the CLI returns codes README does not document: {sorted(cli_codes - set(documented))}")
