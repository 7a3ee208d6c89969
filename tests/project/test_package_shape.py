"""The package stays small enough to read: no module over 600 lines (issue 11).

Cyclomatic complexity (at most 15 per function) is enforced by ruff's C901, configured
in pyproject.toml and run by .ci/run.
"""

from __future__ import annotations

from pathlib import Path

import pleo_auth

MAX_LINES = 600
PACKAGE = Path(pleo_auth.__file__).parent


def test_no_module_in_the_package_is_over_600_lines() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 30, f"found only {len(modules)} modules under {PACKAGE}"
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in modules}
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
