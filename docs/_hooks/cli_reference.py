"""MkDocs hook: the CLI reference is generated from the parser the command runs.

A page containing the marker below gets, in its place, the help of ``pleo-auth``
and of each of its commands, as ``pleo_auth.cli.build_parser()`` prints them, so
the reference cannot drift from the command line. mkdocs.yml lists this file
under ``hooks``; ``render()`` is also called by the tests.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

MARKER = "<!-- cli-reference -->"

#: Help is wrapped as on a terminal this wide, whatever terminal builds the docs.
WIDTH = 88


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the marker with the generated reference (mkdocs calls this per page)."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The reference, as Markdown: the top-level help, then one section per command."""
    if parser is None:
        from pleo_auth.cli import build_parser

        parser = build_parser()
    parts = [_block(_help(parser))]
    for name, summary, subparser in _commands(parser):
        heading = f"## {parser.prog} {name}"
        parts.append(f"{heading}\n\n{_sentence(summary)}\n\n{_block(_help(subparser))}")
    return "\n\n".join(parts) + "\n"


def _commands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Each command's name, one-line help and parser, in the order ``--help`` lists them."""
    commands = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                commands.append((name, summaries.get(name, ""), subparser))
    return commands


def _help(parser: argparse.ArgumentParser) -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        return parser.format_help().rstrip()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _block(text: str) -> str:
    return f"```text\n{text}\n```"
