"""Griffe extension: docstrings written for Sphinx read well in the Markdown site.

pleo-auth's docstrings are Google style with a few reST habits, which Markdown would
show raw: roles such as :class:`~pleo_auth.TokenStore` become `TokenStore` (code, the
last part of the name when it starts with ``~``), and a paragraph ending in ``::``
before an indented block ends in ``:`` (the indented block is a code block in both).
mkdocs.yml lists this file under the mkdocstrings handler's ``extensions``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S)::$", flags=re.M)
_DOUBLE_BACKTICKS = re.compile(r"``([^`]+)``")


def markdown(text: str) -> str:
    """One docstring's reST roles, literal-block markers and double backticks, as Markdown."""

    def role(match: re.Match[str]) -> str:
        short, target = match.groups()
        return f"`{target.rsplit('.', 1)[-1] if short else target}`"

    text = _ROLE.sub(role, text)
    text = _LITERAL.sub(r"\1:", text)
    return _DOUBLE_BACKTICKS.sub(r"`\1`", text)


class SphinxRoles(griffe.Extension):
    """Rewrites every loaded object's docstring with :func:`markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
