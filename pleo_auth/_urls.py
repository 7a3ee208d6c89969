"""Which URLs may carry a token: HTTPS everywhere, plain HTTP only on loopback."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

import requests

from .errors import ConfigurationError

__all__ = ["ApiScope", "check_secure_url", "is_loopback_host", "origin", "parse_http_url"]


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


def same_endpoint(first: str, second: str) -> bool:
    """Whether two URLs name the same endpoint, as a person would judge: the
    scheme and host in any case, a default port written or not, and a trailing
    ``/`` are not differences; the path (case included) and the query are.

    >>> same_endpoint("https://Auth.pleo.io:443/oauth/token/", "https://auth.pleo.io/oauth/token")
    True
    >>> same_endpoint("https://auth.pleo.io/oauth/token", "https://auth.staging.pleo.io/oauth/token")
    False
    """
    if first == second:
        return True
    try:
        a, b = urllib.parse.urlsplit(first), urllib.parse.urlsplit(second)
    except ValueError:
        return False
    return (
        origin(first) == origin(second)
        and a.path.rstrip("/") == b.path.rstrip("/")
        and a.query == b.query
    )


# -- which prepared URLs are under api_url ----------------------------------------

_PERCENT_U = re.compile(r"%u([0-9a-fA-F]{4})")
_OVERLONG_DOT = re.compile(r"%c0%ae|%e0%80%ae", re.IGNORECASE)  # old IIS decoded these
_SEGMENT_SEPARATORS = re.compile(r"[/\\]")
_SEGMENT_END = re.compile(r"[;?#]")
# What some server, proxy or framework reads as a dot: "." itself, and the
# full-width and leader dots that NFKC normalisation turns into ".".
_DOTS = frozenset(".\uff0e\u2024\ufe52")
# What a server may trim off the end of a segment before looking at it.
_TRIMMED = " \t\r\n\x00\x0b\x0c"
_MAX_DECODES = 4


def _dot_segment(segment: str) -> bool:
    core = _SEGMENT_END.split(segment, 1)[0].strip(_TRIMMED)
    return bool(core) and all(char in _DOTS for char in core)


def has_dot_segment(path: str) -> bool:
    """Whether any server could read a segment of ``path`` as ``.`` or ``..``.

    The reading is deliberately the most liberal one, so that it finds a
    dot-segment wherever any stricter reading would: percent-escapes decoded
    until nothing changes (with IIS's ``%uXXXX`` and overlong UTF-8 dots),
    ``\\`` and an encoded slash taken as separators, ``;parameters`` dropped
    (Tomcat reads ``..;x`` as ``..``), blanks and NULs trimmed, full-width dots
    taken as dots, and any run of dots counted.

    >>> [has_dot_segment(p) for p in ("/v2/%2e%2E/v3", "/v2/..%2fv3", "/v2/..;/x")]
    [True, True, True]
    >>> has_dot_segment("/v2/files/report.v3.csv"), has_dot_segment("/v2/..hidden")
    (False, False)
    """
    for _ in range(_MAX_DECODES):
        decoded = _OVERLONG_DOT.sub(".", _PERCENT_U.sub(lambda m: chr(int(m[1], 16)), path))
        decoded = urllib.parse.unquote(decoded)
        if decoded == path:
            break
        path = decoded
    else:
        return True  # still decoding: assume the worst
    return any(_dot_segment(segment) for segment in _SEGMENT_SEPARATORS.split(path))


class ApiScope:
    """Decides, on the URL exactly as requests will send it, whether it is under ``api_url``.

    The check runs on the :class:`requests.PreparedRequest`'s final URL: after
    urllib3 has removed plain dot-segments and requests has decoded ``%2e``
    back into ``.`` (which brings new dot-segments back). A URL is in scope
    when it starts with the prepared ``api_url`` plus ``/`` (same scheme,
    host, port and path prefix, since the netloc of such a URL ends at that
    ``/``) and no server could read a segment of its path as a dot-segment
    (see :func:`has_dot_segment`): such paths never occur in real API calls,
    and each is a way out of ``api_url`` for some server.

    Thread safety:
        Immutable after construction; :meth:`covers` may run on any thread.

    Raises:
        ConfigurationError: ``api_url`` has dot-segments, a query or a fragment.
    """

    __slots__ = ("prefix",)

    def __init__(self, api_url: str) -> None:
        parts = urllib.parse.urlsplit(api_url)
        if parts.query or parts.fragment or "?" in api_url or "#" in api_url:
            raise ConfigurationError(
                "api_url must be a plain base URL, without a query or fragment"
            )
        if "\\" in parts.path or has_dot_segment(parts.path):
            raise ConfigurationError("api_url must be a plain base URL, without dot-segments")
        prepared = requests.PreparedRequest()
        prepared.prepare_url(api_url.rstrip("/") + "/", None)
        #: The prepared ``api_url``, ending in ``/``: scheme and host lower case.
        self.prefix: str = prepared.url or ""

    def covers(self, url: str | None) -> bool:
        """Whether a prepared request's ``url`` may carry the token. Cheap when it is plain."""
        prefix = self.prefix
        if url is None or not url.startswith(prefix):
            return False
        # The path is what the server gets: from the prefix's final "/" to "?" or "#".
        path = url[len(prefix) - 1 :].partition("?")[0].partition("#")[0]
        if "%" not in path and "\\" not in path and "/." not in path:
            return True
        return not has_dot_segment(path)
