"""The callback of a login: its parameters read, its state matched, its code checked.

Everything here comes from the browser, so nothing is trusted: a repeated
parameter is refused, a mismatched state is refused before any exchange, and
Pleo's error text is cut short and kept on one line.
"""

from __future__ import annotations

import hmac
import re
import urllib.parse
from collections.abc import Mapping

from ._text import one_line
from .errors import AuthorizationError, ConfigurationError

__all__ = ["callback_parameters", "check_code", "code_from_callback"]

# RFC 6749 appendix A.11: a code is visible ASCII and spaces.
_CODE_RE = re.compile(r"[\x20-\x7e]+")
_DESCRIPTION_LIMIT = 300
_ERROR_LIMIT = 64
_CALLBACK_PARAMETERS = ("state", "code", "error", "error_description")


def callback_parameters(callback: object) -> dict[str, str]:
    """The callback's ``state``, ``code``, ``error`` and ``error_description``.

    Raises:
        AuthorizationError: The URL is malformed, or repeats one of them (RFC 6749
            section 3.1 forbids it; a repeat is how a forged value is smuggled in).
        ConfigurationError: ``callback`` is neither a URL nor a mapping, or a value
            is not a string.
    """
    found: dict[str, list[object]]
    if isinstance(callback, str):
        try:
            query = urllib.parse.urlsplit(callback).query
        except ValueError:
            raise AuthorizationError(
                "the callback is not a valid URL. Start the login again."
            ) from None
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        found = {
            name: [value for key, value in pairs if key == name] for name in _CALLBACK_PARAMETERS
        }
    elif isinstance(callback, Mapping):
        # Web frameworks' multi-value dicts (Flask's request.args, Django's
        # request.GET) give one value by key; only getlist shows a repeat.
        getlist = getattr(callback, "getlist", None)
        found = {
            name: list(getlist(name)) if callable(getlist) else [callback[name]]
            for name in _CALLBACK_PARAMETERS
            if name in callback
        }
    else:
        raise ConfigurationError(
            "the callback must be the callback URL (a string) or its query parameters "
            f"(a mapping), not {type(callback).__name__}"
        )
    params: dict[str, str] = {}
    for name, values in found.items():
        if len(values) > 1:
            raise AuthorizationError(
                f"the callback repeats its {name} parameter, so it cannot be trusted. "
                "Start the login again."
            )
        if values:
            value = values[0]
            if not isinstance(value, str):
                raise ConfigurationError(
                    f"the callback's {name} must be a string, not {type(value).__name__}"
                )
            params[name] = value
    return params


def check_code(code: str) -> None:
    # Never echo the code: it is a credential until it is spent.
    if not code:
        raise AuthorizationError("the authorization code is empty")
    if not _CODE_RE.fullmatch(code):
        raise AuthorizationError(
            "the authorization code is malformed (not printable ASCII). Start the login again."
        )


def code_from_callback(expected_state: str, callback: object) -> str:
    """The authorization code of a callback that belongs to the login whose state is
    ``expected_state``.

    Raises:
        AuthorizationError: The state does not match or is missing, Pleo reported
            an error, or there is no code.
        ConfigurationError: ``callback`` is neither a URL nor a mapping of strings.
    """
    params = callback_parameters(callback)
    state = params.get("state")
    # surrogatepass: a percent-encoded lone surrogate must compare unequal, not crash.
    if state is not None and not hmac.compare_digest(
        state.encode("utf-8", "surrogatepass"), expected_state.encode("utf-8", "surrogatepass")
    ):
        raise AuthorizationError(
            "the callback's state does not match this login: it belongs to another "
            "login attempt, or was forged. Start the login again."
        )
    if "error" in params:
        # Both come from the browser: cut them short and keep them on one line.
        error = one_line(params["error"], _ERROR_LIMIT) or "no error code"
        description = one_line(params.get("error_description", ""), _DESCRIPTION_LIMIT)
        detail = f": {description}" if description else ""
        raise AuthorizationError(
            f"Pleo did not authorise the login ({error}){detail}",
            error=error,
            description=description or None,
        )
    if state is None:
        raise AuthorizationError(
            "the callback has no state, so it cannot be matched to this login. "
            "Start the login again."
        )
    code = params.get("code")
    if code is None:
        raise AuthorizationError("the callback carries no authorization code")
    return code
