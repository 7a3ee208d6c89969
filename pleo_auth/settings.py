"""One validated value holding every setting of a Pleo integration.

A :class:`Settings` holds the client id and secret, the environment (and, from
:data:`ENDPOINTS`, its token, authorize, introspection and API URLs), the URL
overrides, the store, the scopes, the durations and attempt counts, and the
client authentication method. It is built, and checked, in one of three ways:

* from arguments: ``Settings("client-id", "secret", environment="staging")``;
* from the environment: :meth:`Settings.from_env` reads ``PLEO_CLIENT_ID``,
  ``PLEO_STORE``, ... (``PLEO_`` and the field's name in capitals);
* from a mapping: :meth:`Settings.from_mapping` reads ``CLIENT_ID``, ``STORE``,
  ... (Flask's ``app.config`` after its ``PLEO_`` prefix, Django's ``PLEO_AUTH``).

:class:`~pleo_auth.PleoSession` and :class:`~pleo_auth.AuthorizationFlow` take
one (``settings=``), the ``pleo-auth`` command and the web integrations build
one, and nothing checks a setting again.

>>> settings = Settings("client-1", "secret", token_url="http://127.0.0.1:8080/oauth/token")
>>> settings.endpoints.authorize_url
'http://127.0.0.1:8080/oauth/authorize'
>>> settings.target()
"token_url='http://127.0.0.1:8080/oauth/token' api_url='https://external.pleo.io'"
>>> 'secret' in repr(settings)
False
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._arguments import default, settings_from_arguments
from ._checks import check_attempts, check_seconds
from ._text import shown
from ._urls import check_secure_url
from .errors import ConfigurationError
from .stores.base import TokenStore
from .stores.spec import DEFAULT_SPEC, StoreBuilder, parse_spec, redact_spec

if TYPE_CHECKING:
    from .login_hint import LoginHint

__all__ = [
    "ENDPOINTS",
    "ClientAuth",
    "Endpoints",
    "Environment",
    "Settings",
    "check_client_id",
    "default",
    "normalize_scopes",
    "settings_from_arguments",
]

Environment = Literal["production", "staging"]
ClientAuth = Literal["basic", "body"]


@attrs.frozen
class Endpoints:
    """The URLs of one Pleo environment, or of one set of overrides.

    Attributes:
        token_url: The OAuth token endpoint (``/oauth/token``).
        authorize_url: Where a person logs in (``/oauth/authorize``).
        introspection_url: The token introspection endpoint.
        api_url: The API base URL, without a trailing ``/``.
    """

    token_url: str
    authorize_url: str
    introspection_url: str
    api_url: str


def _environment(auth: str, api: str) -> Endpoints:
    return Endpoints(
        token_url=f"{auth}/oauth/token",
        authorize_url=f"{auth}/oauth/authorize",
        introspection_url=f"{auth}/oauth/token/introspect",
        api_url=api,
    )


#: The URLs of each Pleo environment: the one table every module reads.
ENDPOINTS: Mapping[str, Endpoints] = MappingProxyType(
    {
        "production": _environment("https://auth.pleo.io", "https://external.pleo.io"),
        "staging": _environment("https://auth.staging.pleo.io", "https://external.staging.pleo.io"),
    }
)

# RFC 6749 appendix A.4: a scope token is printable ASCII except space, " and \.
_SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def normalize_scopes(scopes: str | Iterable[str] | None) -> str | None:
    """Join scopes into Pleo's space-separated form.

    Args:
        scopes: ``"users:read export-jobs:read"``, an iterable of scope names, or None.

    Returns:
        The scopes separated by single spaces, in the given order without
        duplicates, or None when there are none.

    Raises:
        ConfigurationError: A scope contains a character OAuth forbids.

    >>> normalize_scopes(["users:read", "export-jobs:read users:read"])
    'users:read export-jobs:read'
    """
    if scopes is None:
        return None
    try:
        items = [scopes] if isinstance(scopes, str) else list(scopes)
    except TypeError:
        raise ConfigurationError(
            f"scopes must be a string or a list of strings, not {type(scopes).__name__}"
        ) from None
    seen: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError("scopes must be strings")
        for token in item.split():
            if not _SCOPE_TOKEN_RE.fullmatch(token):
                raise ConfigurationError(f"invalid scope {shown(token)}")
            seen.setdefault(token, None)
    return " ".join(seen) or None


def check_text(name: str, value: object, *, optional: bool = False) -> None:
    """Refuse an id or secret that no request could carry as it is.

    A byte the locale cannot decode reaches ``os.environ`` as a lone surrogate,
    which no request can carry: it is refused here, not at the first request.
    The value is never echoed: it may be the client secret.
    """
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or not value.isprintable():
        none = " or None" if optional else ""
        raise ConfigurationError(
            f"{name} must be a non-empty string of printable characters{none} "
            "(no newline, control character or undecodable byte)"
        )


def check_client_id(client_id: object) -> str:
    """The one rule for a client id: a non-empty string of printable characters.

    Raises:
        ConfigurationError: Anything else.
    """
    check_text("client_id", client_id)
    assert isinstance(client_id, str)
    return client_id


class _InvalidSetting(ConfigurationError):
    """A field of :class:`Settings` is invalid; ``setting`` names it, so the message
    can name where the value came from (a flag, a variable, a key)."""

    def __init__(self, setting: str, message: str):
        self.setting = setting
        super().__init__(message)


def _check_environment(name: str, value: object) -> None:
    if not isinstance(value, str) or value not in ENDPOINTS:
        raise ConfigurationError(
            f"unknown environment {shown(value)}: use one of {', '.join(sorted(ENDPOINTS))}"
        )


def _check_client_id(name: str, value: object) -> None:
    # Empty only where nothing is sent to Pleo: see Settings.require_client_id.
    if value != "":
        check_client_id(value)


def _check_url(name: str, value: object) -> None:
    if value is None:
        return
    parts = check_secure_url(name, value)
    # A browser drops an authorize URL's fragment; api_url's own rules (no query,
    # fragment or dot-segments) are ApiScope's; a token URL's fragment is never sent.
    if parts.fragment and name == "authorize_url":
        raise ConfigurationError(f"{name} must not have a #fragment")


def _check_optional_text(name: str, value: object) -> None:
    check_text(name, value, optional=True)


def _check_store(name: str, value: object) -> StoreBuilder | None:
    """The builder of the store a spec names; None for a TokenStore, or none."""
    if value is None or isinstance(value, TokenStore):
        return None
    return parse_spec(value)


def _store_repr(value: object) -> str:
    # A Redis URL may carry a password: a repr shows it redacted, never whole.
    return repr(redact_spec(value)) if isinstance(value, str) else repr(value)


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {shown(value)}")


def _check_client_auth(name: str, value: object) -> None:
    if value not in ("basic", "body"):
        raise ConfigurationError(f"client_auth must be 'basic' or 'body', not {shown(value)}")


def _seconds(name: str, value: object) -> None:
    check_seconds(name, value)


def _positive_seconds(name: str, value: object) -> None:
    check_seconds(name, value, positive=True)


def _unset_if_empty(value: object) -> object:
    return None if value == "" else value


def _scopes(value: Any) -> str | None:
    try:
        return normalize_scopes(value)
    except ConfigurationError as exc:
        raise _InvalidSetting("scopes", str(exc)) from None


_NUMBERS = {
    "refresh_margin": float,
    "max_refresh_attempts": int,
    "max_refresh_time": float,
    "refresh_timeout": float,
    "drain_timeout": float,
}


_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@attrs.frozen
class Settings:
    """Every setting of a Pleo integration, checked once, when built.

    Args:
        client_id: The OAuth client id of your Pleo integration. Empty only
            where nothing is sent to Pleo (``pleo-auth status`` of a file).
        client_secret: Its secret; None for a public, PKCE-only client.
            Never shown in a repr or message.
        environment: ``"production"`` or ``"staging"``; picks the URLs in
            :data:`ENDPOINTS`.
        token_url: Overrides the environment's token endpoint.
        api_url: Overrides the environment's API base URL.
        authorize_url: Overrides ``/oauth/authorize``; by default the one beside
            an overridden ``token_url`` (see :attr:`endpoints`).
        store: Where the tokens live: a spec (``keyring``, ``file:PATH``,
            ``redis://...``, see :mod:`pleo_auth.stores.spec`), a
            :class:`~pleo_auth.TokenStore`, or None for the keyring.
        scopes: The scopes a login asks for, space-separated or a list.
        subject: Pleo's ``urn_pleo_params_oauth_subject`` for a login.
        refresh_margin: Seconds before expiry to refresh.
        client_auth: ``"basic"`` (HTTP Basic, Pleo's documented method) or ``"body"``.
        max_refresh_attempts: Attempts per call to the token endpoint on transient failures.
        max_refresh_time: Seconds one call to the token endpoint may spend on retries.
        refresh_timeout: Seconds to wait for the token endpoint per attempt.
        drain_timeout: Seconds a refresh waits for requests already in flight.
        encrypt: Keep the tokens encrypted at rest (:func:`~pleo_auth.EncryptedStore`,
            the ``pleo-auth[crypto]`` extra), with the keys in ``PLEO_AUTH_KEYS``, the
            file ``PLEO_AUTH_KEYS_FILE`` names, or the keyring; ``PLEO_ENCRYPT=1``.

    Raises:
        ConfigurationError: A setting is invalid; the message names it.

    Thread safety:
        Immutable; share it freely.
    """

    client_id: str
    client_secret: str | None = attrs.field(default=None, repr=False)
    environment: Environment = attrs.field(default="production", kw_only=True)
    token_url: str | None = attrs.field(default=None, kw_only=True, converter=_unset_if_empty)
    api_url: str | None = attrs.field(default=None, kw_only=True, converter=_unset_if_empty)
    authorize_url: str | None = attrs.field(default=None, kw_only=True, converter=_unset_if_empty)
    store: str | TokenStore | None = attrs.field(
        default=None, kw_only=True, converter=_unset_if_empty, repr=_store_repr
    )
    scopes: str | None = attrs.field(default=None, kw_only=True)
    subject: str | None = attrs.field(
        default=None,
        kw_only=True,
        converter=_unset_if_empty,
    )
    refresh_margin: float = attrs.field(default=60.0, kw_only=True)
    client_auth: ClientAuth = attrs.field(default="basic", kw_only=True)
    max_refresh_attempts: int = attrs.field(default=5, kw_only=True)
    max_refresh_time: float = attrs.field(default=30.0, kw_only=True)
    refresh_timeout: float = attrs.field(default=10.0, kw_only=True)
    drain_timeout: float = attrs.field(default=5.0, kw_only=True)
    encrypt: bool = attrs.field(default=False, kw_only=True)
    # What builds the store a spec names: the spec is parsed once, here.
    _store_builder: StoreBuilder | None = attrs.field(
        init=False, default=None, repr=False, eq=False
    )

    def __attrs_post_init__(self) -> None:
        # In a fixed order, so a message names a bad environment before a bad
        # secret, and a client id (which may only be missing) last.
        for name, check in _CHECKS:
            try:
                checked = check(name, getattr(self, name))
            except ConfigurationError as exc:
                raise _InvalidSetting(name, str(exc)) from None
            if name == "store" and checked is not None:
                object.__setattr__(self, "_store_builder", checked)
        object.__setattr__(self, "scopes", _scopes(self.scopes))
        try:
            _check_client_id("client_id", self.client_id)
        except ConfigurationError as exc:
            raise _InvalidSetting("client_id", str(exc)) from None

    # -- built from the environment, or from a mapping ---------------------------------

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, labels: Mapping[str, str] | None = None,
        **given: Any,
    ) -> Settings:  # fmt: skip
        """Settings from ``PLEO_*`` environment variables; ``given`` values win.

        Each field is read from ``PLEO_`` and its name in capitals
        (``PLEO_CLIENT_ID``, ``PLEO_STORE``, ``PLEO_REFRESH_MARGIN``, ...). A blank
        variable is unset. ``given`` holds values from elsewhere (the command
        line's flags); None there means not given.

        Args:
            env: The variables; defaults to ``os.environ``.
            labels: How to name a given value's source in a message, by field
                (the command's flag, ``--token-url``); defaults to the field's name.
            **given: Field values that win over the environment.

        Raises:
            ConfigurationError: A setting is invalid; the message names the
                variable or flag it came from.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name in _NAMES:
            variable = f"PLEO_{name.upper()}"
            value = given.get(name)
            source = (labels or {}).get(name, name)
            if value is None:
                value, source = env.get(variable), variable
                if isinstance(value, str) and name != "client_secret":
                    value = value.strip()
                if value is None or value == "":
                    continue
                value = _parse_number(name, variable, value)
            values[name] = value
            sources[name] = source
        values.setdefault("client_id", "")
        return cls._build(values, lambda name: sources.get(name, name))

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, where: str = "settings", prefix: str = ""
    ) -> Settings:
        """Settings from a mapping of upper-case names (``CLIENT_ID``, ``STORE``, ...).

        ``STORE`` is a spec string or a :class:`~pleo_auth.TokenStore`; ``SCOPES`` a
        space-separated string or a list. None and ``""`` are unset.

        Args:
            values: The settings, without ``prefix``.
            where: Where they are, for messages (``settings.PLEO_AUTH``).
            prefix: The prefix the keys carry where a person writes them
                (``PLEO_`` in Flask's ``app.config``), for messages.

        Raises:
            ConfigurationError: A key is unknown or ``CLIENT_ID`` missing, or a
                setting is invalid; the message names ``where`` and the key.
        """
        odd = sorted(shown(key, 40) for key in values if not isinstance(key, str))
        if odd:
            raise ConfigurationError(
                f"{where}: setting names must be strings, not {', '.join(odd)}"
            )
        fields = {key.lower(): value for key, value in values.items()}
        unknown = sorted(f"{prefix}{key}" for key in values if key.lower() not in _NAMES)
        if unknown:
            raise ConfigurationError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        if not fields.get("client_id"):
            raise ConfigurationError(f"{where}: {prefix}CLIENT_ID is required")
        kept = {name: value for name, value in fields.items() if value not in (None, "")}
        return cls._build(kept, lambda name: f"{where}: {prefix}{name.upper()}")

    @classmethod
    def _build(cls, values: dict[str, Any], label: Callable[[str], str]) -> Settings:
        try:
            return cls(**values)
        except _InvalidSetting as exc:
            raise ConfigurationError(_labelled(str(exc), exc.setting, label(exc.setting))) from None

    # -- what the settings give -------------------------------------------------------

    @property
    def endpoints(self) -> Endpoints:
        """The URLs to use: the environment's, with the overrides applied.

        Without an explicit ``authorize_url``, an overridden ``token_url`` that
        ends in ``/oauth/token`` (the emulator, a proxy) brings the authorize
        and introspection endpoints beside it, so one override is enough.
        """
        base = ENDPOINTS[self.environment]
        token_url = self.token_url or base.token_url
        beside = _beside(self.token_url)
        authorize_url = self.authorize_url or (
            beside.authorize_url if beside else base.authorize_url
        )
        return Endpoints(
            token_url=token_url,
            authorize_url=authorize_url,
            introspection_url=beside.introspection_url if beside else base.introspection_url,
            api_url=(self.api_url or base.api_url).rstrip("/"),
        )

    @property
    def overridden(self) -> bool:
        """Whether a URL override points the settings away from the environment."""
        return any(url is not None for url in (self.token_url, self.api_url, self.authorize_url))

    def target(self) -> str:
        """Where these settings talk to, for a repr: the environment, or the URLs
        overriding it (an emulator is no ``production``)."""
        if not self.overridden:
            return f"environment={self.environment!r}"
        urls = self.endpoints
        return f"token_url={urls.token_url!r} api_url={urls.api_url!r}"

    def require_client_id(self) -> str:
        """The client id, for whatever sends it to Pleo.

        Raises:
            ConfigurationError: The client id is empty.
        """
        if not self.client_id:
            raise ConfigurationError("client_id is required (your integration's OAuth client id)")
        return self.client_id

    def build_store(self) -> TokenStore:
        """The store these settings name: the one place the default,
        ``KeyringStore(account=client_id)``, is built.

        Raises:
            ConfigurationError: The store needs what is missing (the keyring, a
                client id; a Redis store, the redis extra).
        """
        if isinstance(self.store, TokenStore):
            store = self.store
        else:
            # The client id was checked when these settings were made: not again.
            build = self._store_builder or parse_spec(DEFAULT_SPEC)
            store = build(self.client_id)
        if not self.encrypt:
            return store
        from .stores.encrypted import encrypt_store

        return encrypt_store(store, client_id=self.client_id)

    def login_hint(self, store: TokenStore | None = None, *, view: str | None = None) -> LoginHint:
        """What logs in again with these settings, to ``store``, as a value.

        Args:
            store: The store the login must fill; by default :meth:`build_store`'s.
            view: The URL of a web view that logs in, for a web app.
        """
        from .login_hint import LoginHint

        return LoginHint.for_settings(self, store or self.build_store(), view=view)

    def evolve(self, **changes: Any) -> Settings:
        """A copy with ``changes``, checked like any new settings."""
        return attrs.evolve(self, **changes)


_NAMES = tuple(field.name for field in attrs.fields(Settings) if field.init)

#: Each setting's check, in the order they run (scopes and the client id follow).
_CHECKS: tuple[tuple[str, Callable[[str, Any], object]], ...] = (
    ("environment", _check_environment),
    ("token_url", _check_url),
    ("api_url", _check_url),
    ("authorize_url", _check_url),
    ("store", _check_store),
    ("client_secret", _check_optional_text),
    ("subject", _check_optional_text),
    ("refresh_margin", _seconds),
    ("client_auth", _check_client_auth),
    ("max_refresh_attempts", check_attempts),
    ("max_refresh_time", _positive_seconds),
    ("refresh_timeout", _positive_seconds),
    ("drain_timeout", _seconds),
    ("encrypt", _check_flag),
)


def _parse_number(name: str, variable: str, value: Any) -> Any:
    if name == "encrypt" and isinstance(value, str):
        flag = _FLAGS.get(value.strip().lower())
        if flag is None:
            raise ConfigurationError(
                f"{variable} must be 1 or 0 (true or false), not {shown(value)}"
            )
        return flag
    kind = _NUMBERS.get(name)
    if kind is None or not isinstance(value, str):
        return value
    try:
        return kind(value)
    except ValueError:
        wanted = "a whole number" if kind is int else "a number of seconds"
        raise ConfigurationError(f"{variable} must be {wanted}, not {shown(value)}") from None


def _labelled(message: str, setting: str, label: str) -> str:
    """``message`` about ``setting``, saying where the value came from."""
    if label == setting:
        return message
    if label.startswith(("--", "PLEO_")):
        return f"{message} ({label})"
    if message.startswith(setting + " "):
        return f"{label}{message[len(setting) :]}"
    return f"{label}: {message}"


def _beside(token_url: str | None) -> Endpoints | None:
    """The endpoints beside an overridden ``.../oauth/token``, if it is one."""
    if token_url is None:
        return None
    base, sep, tail = token_url.rstrip("/").rpartition("/oauth/token")
    if not sep or tail:
        return None
    return Endpoints(
        token_url=token_url,
        authorize_url=base + "/oauth/authorize",
        introspection_url=base + "/oauth/token/introspect",
        api_url="",
    )
