"""The setting arguments of PleoSession and AuthorizationFlow: their defaults, told
apart from the same values given, and how they become a :class:`~pleo_auth.Settings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, cast

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["default", "settings_from_arguments"]


class _Default:
    """A keyword argument's default, told apart from the same value given.

    ``PleoSession(settings=staging, environment="production")`` names two
    environments; were ``"production"`` the plain default, it would pass for
    ``settings`` alone and silently use staging. Its repr is the value's, so a
    signature reads as it always did.
    """

    __slots__ = ("value",)

    def __init__(self, value: object):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


_T = TypeVar("_T")


def default(value: _T) -> _T:
    """``value`` as a constructor's default, which :func:`settings_from_arguments`
    tells apart from ``value`` given explicitly."""
    return cast(_T, _Default(value))


def settings_from_arguments(settings: Settings | None, **arguments: Any) -> Settings:
    """The settings a constructor was given: ``settings``, or its keyword arguments.

    The one function through which :class:`~pleo_auth.PleoSession` and
    :class:`~pleo_auth.AuthorizationFlow` turn their 0.1 keyword arguments into
    :class:`Settings`. ``arguments`` are named as :class:`Settings`' fields; those
    the caller left out are :func:`default` values (or None).

    Args:
        settings: The settings given, if any.
        **arguments: The constructor's setting arguments.

    Raises:
        ConfigurationError: An argument is invalid, or ``settings`` came with any
            setting argument given explicitly (even one equal to its default).
    """
    from .settings import Settings  # settings.py re-exports this module's names

    if settings is None:
        values: dict[str, Any] = {
            name: value.value if isinstance(value, _Default) else value
            for name, value in arguments.items()
        }
        return Settings(**values)
    if not isinstance(settings, Settings):
        raise ConfigurationError(
            f"settings must be a pleo_auth.Settings, not {type(settings).__name__}"
        )
    given = sorted(
        name
        for name, value in arguments.items()
        if value is not None and not isinstance(value, _Default)
    )
    if given:
        raise ConfigurationError(f"give either settings or {', '.join(given)}, not both")
    return settings
