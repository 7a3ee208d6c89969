"""Which URLs may carry a token: HTTPS everywhere, plain HTTP only on loopback."""

from __future__ import annotations

import ipaddress
import urllib.parse

from .errors import ConfigurationError

__all__ = ["check_secure_url", "is_loopback_host", "origin", "parse_http_url"]


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ``::1``.

    >>> is_loopback_host("127.0.0.1"), is_loopback_host("localhost"), is_loopback_host("::1")
    (True, True, True)
    >>> is_loopback_host("10.0.0.1"), is_loopback_host("api.localhost")
    (False, False)
    """
    host = host.lower()
    if host == "localhost":
        return True
    # Not "*.localhost": RFC 6761 asks resolvers to answer loopback for it, but a
    # glibc system without systemd-resolved sends such names to DNS.
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_http_url(name: str, url: object) -> urllib.parse.SplitResult:
    """An absolute http(s) URL with a host and a valid port, parsed.

    Raises:
        ConfigurationError: Anything else. The URL itself is not echoed: it
            might carry a password or a token.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"{name} must be a URL string, not {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigurationError(f"{name} is not a valid URL (bad host or port)") from None
    if parts.scheme not in ("http", "https") or not host:
        shown = f"a {parts.scheme}: URL" if parts.scheme else "a URL without a scheme"
        raise ConfigurationError(f"{name} must be an absolute http(s) URL with a host, not {shown}")
    return parts


def check_secure_url(name: str, url: object) -> urllib.parse.SplitResult:
    """Refuse a URL that would send a secret in clear text, or that is no URL at all.

    Tokens and the client secret travel to the token endpoint and the API, so
    both must be ``https://``. Plain ``http://`` is allowed only to a loopback
    address, where nothing crosses a network: the emulator, a local proxy.

    Args:
        name: The setting's name, for the message (``token_url``, ``api_url``).
        url: The setting's value.

    Returns:
        The parsed URL.

    Raises:
        ConfigurationError: Not a string, not an absolute http(s) URL with a
            host, a URL with credentials, or plain HTTP to a host other than
            loopback.
    """
    parts = parse_http_url(name, url)
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"{name} must not contain a user name or password")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigurationError(
            f"{name} must use https://: plain http:// would send tokens in clear text to "
            f"{host!r}. Plain HTTP is allowed only to loopback addresses (127.0.0.1, ::1, "
            f"localhost), for the emulator."
        )
    return parts


def origin(url: str) -> tuple[str, str, int | None]:
    """The (scheme, host, port) a URL talks to, with default ports made explicit."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port
