"""Whether a request's body can be sent a second time: for a 401's replay
(:mod:`pleo_auth.session`) and a 429's retry (:mod:`pleo_auth.ratelimit`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["replayable"]

_RESENDABLE = (str, bytes, bytearray, int, float)


def _resendable_value(value: Any) -> bool:
    """Whether requests encodes one form value the same way every time."""
    if value is None or isinstance(value, _RESENDABLE):
        return True
    # requests iterates any other iterable value: a list is read again, a file
    # or a generator is spent.
    return isinstance(value, list | tuple) and all(
        item is None or isinstance(item, _RESENDABLE) for item in value
    )


def _pairs(fields: Any) -> list[tuple[Any, Any]] | None:
    """A form's or ``files``' (name, value) pairs, as requests reads them; None if unknown."""
    if isinstance(fields, Mapping):
        return list(fields.items())
    if isinstance(fields, list | tuple) and all(
        isinstance(pair, list | tuple) and len(pair) == 2 for pair in fields
    ):
        return [(name, value) for name, value in fields]
    return None


def replayable(data: Any, files: Any) -> bool:
    """Whether a request body can be sent a second time, unchanged.

    Only bodies known to encode the same bytes again are: text and bytes, forms
    whose values are text, bytes or numbers (or lists of them), and multipart
    uploads whose file contents are text or bytes. A file, a generator, an
    iterator, a stream-like encoder (``read()``), or a form or upload holding
    one, is spent by the first send.
    """
    if data is not None and not isinstance(data, str | bytes | bytearray):
        pairs = _pairs(data)
        if pairs is None or not all(_resendable_value(value) for _, value in pairs):
            return False
    if not files:
        return True
    uploads = _pairs(files)
    if uploads is None:
        return False
    for _, upload in uploads:
        # ("name", content[, content_type[, headers]]), or the content alone.
        if isinstance(upload, list | tuple):
            if not 2 <= len(upload) <= 4:
                return False
            upload = upload[1]
        if not (upload is None or isinstance(upload, str | bytes | bytearray)):
            return False
    return True
