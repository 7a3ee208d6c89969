"""The README and the docs site keep their promises: the README is short and starts
with the two set-up commands, its links resolve, no page tells a user to import a
private module, and the CLI reference is generated from the real parser."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEMO = ".venv/bin/pleo-auth demo"
TEST_COMMAND = ".venv/bin/pytest"


def first_code_block(text: str) -> tuple[str, list[str]]:
    """The language and the lines of the first fenced code block."""
    match = re.search(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)
    assert match is not None, "no fenced code block"
    return match.group(1), match.group(2).splitlines()


def command(line: str) -> str:
    """A shell line without its comment."""
    return line.partition("#")[0].strip()


def test_the_readme_is_at_most_150_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"


def test_the_readmes_first_commands_set_up_and_run_the_demo_then_the_tests() -> None:
    text = README.read_text(encoding="utf-8")
    before = text[: text.index("```")].strip().splitlines()
    assert before == ["# pleo-auth"], "the set-up commands come first, under the title"
    language, lines = first_code_block(text)
    assert language == "bash"
    commands = [command(line) for line in lines if command(line)]
    assert len(commands) == 2
    setup_and_demo, tests = commands
    steps = [step.strip() for step in setup_and_demo.split("&&")]
    assert steps[0] == "python3 -m venv .venv"
    assert shlex.split(steps[1]) == [".venv/bin/pip", "install", "-e", ".[test]"]
    assert steps[-1] == DEMO
    assert tests == TEST_COMMAND


def test_ci_runs_the_readmes_test_command_with_output_options_only() -> None:
    """.ci/run runs the README's test command: the same selection, only quieter."""
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(script) if "the README's command" in line)
    run = shlex.split(script[start + 1])
    # Output options only: quieter, no cache files, and the slowest tests listed.
    output = [arg for arg in run if not re.fullmatch(r"--durations=\d+", arg)]
    assert output == ["pytest", "-q", "-p", "no:cacheprovider"]


def test_every_relative_link_in_the_readme_names_a_file_in_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    relative = [target for target in targets if "://" not in target]
    assert relative, "the README links into the docs"
    missing = [target for target in relative if not (ROOT / target).exists()]
    assert missing == []


def documentation() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", documentation(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_names_a_private_module_for_users_to_import(page: Path) -> None:
    private = re.findall(r"\bpleo_auth(?:\.[A-Za-z]\w*)*\._[A-Za-z]\w*", page.read_text("utf-8"))
    assert private == [], "use the public name (pleo_auth.testing.FakeClock, ...)"


# -- the CLI reference ---------------------------------------------------------------


def cli_reference_hook() -> ModuleType:
    path = ROOT / "docs" / "_hooks" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_page_is_generated_from_the_parser() -> None:
    hook = cli_reference_hook()
    page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert hook.MARKER in page
    rendered = hook.on_page_markdown(page, page=None, config=None, files=None)
    assert hook.MARKER not in rendered
    assert hook.render() in rendered


def test_the_cli_reference_has_every_command_and_every_option() -> None:
    from pleo_auth.cli import build_parser

    rendered = cli_reference_hook().render()
    parser = build_parser()
    assert parser.description is not None
    assert parser.description.split(".")[0] in rendered
    subcommands = next(
        action for action in parser._actions if hasattr(action, "choices") and action.choices
    )
    assert subcommands.choices, "pleo-auth has commands"
    for name, subparser in subcommands.choices.items():
        section = rendered.split(f"## pleo-auth {name}\n", 1)
        assert len(section) == 2, f"no section for {name}"
        body = section[1].split("\n## ", 1)[0]
        for action in subparser._actions:
            for option in action.option_strings:
                assert option in body, f"{name} {option}"


def test_every_test_the_docs_name_exists() -> None:
    """The reliability tables cite tests as proof: each cited test must exist, under
    the path given (``C::name`` is the abbreviation a page defines for one file;
    ``name…`` stands for every test whose name begins so)."""
    cited: list[tuple[str, str, str]] = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text()
        aliases = dict(re.findall(r"`(\w)` is `(tests/[\w/]+\.py)`", text))
        for alias_or_path, name, elided in re.findall(
            r"`((?:tests/[\w/]+\.py)|\w)::(\w+)(…)?", text
        ):
            path = aliases.get(alias_or_path, alias_or_path)
            cited.append((page.name, path, name + (r"\w*" if elided else "")))
    assert len(cited) > 40, f"found only {len(cited)} cited tests"
    missing = [
        f"{page}: {path}::{name}"
        for page, path, name in cited
        if not (ROOT / path).is_file()
        or not re.search(rf"^(?:    )?def {name}\(", (ROOT / path).read_text(), re.M)
    ]
    assert not missing, "the docs cite tests that do not exist:\n" + "\n".join(missing)
