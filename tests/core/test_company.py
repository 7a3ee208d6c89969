"""Company: Pleo's company id or URN, checked once, as the key of a grant."""

from __future__ import annotations

import contextlib
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from pleo_auth import Company, ConfigurationError, FileStore
from pleo_auth.testing import Emulator, new_tokens

ID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.mark.parametrize(
    "value",
    [
        ID,
        ID.upper(),
        f"urn:pleo:company:{ID}",
        f"urn:pleo:company:{ID.upper()}",
        f"URN:PLEO:COMPANY:{ID}",
    ],
)
def test_the_id_in_any_case_and_the_urn_give_one_canonical_company(value: str) -> None:
    company = Company(value)
    assert company.id == ID
    assert company.urn == f"urn:pleo:company:{ID}"
    assert company == Company(ID)
    assert hash(company) == hash(Company(ID))


def test_a_company_is_built_from_a_company_too() -> None:
    assert Company(Company(ID)) == Company(ID)


def test_str_is_the_urn_and_repr_shows_it() -> None:
    assert str(Company(ID)) == f"urn:pleo:company:{ID}"
    assert repr(Company(ID)) == f"Company('urn:pleo:company:{ID}')"


def test_companies_sort_by_id() -> None:
    low, high = Company("0" * 8 + ID[8:]), Company("f" * 8 + ID[8:])
    assert sorted([high, low]) == [low, high]


def test_a_company_is_immutable_and_pickles() -> None:
    company = Company(ID)
    with pytest.raises(AttributeError):
        company.id = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(company)) == company


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "it is empty"),
        ("../etc/passwd", "13 characters, neither a UUID"),
        ("..", "2 characters, neither a UUID"),
        ("*", "1 character, neither a UUID"),
        ("pleo-auth:?", "neither a UUID"),
        (f" {ID}", "37 characters with whitespace"),
        (f"{ID} ", "37 characters with whitespace"),
        (f"{ID}\n", "control or other unprintable character"),
        (f"{ID}\x00", "control or other unprintable character"),
        ("\x1b[2J", "control or other unprintable character"),
        (f"urn:pleo:user:{ID}", "a URN of another kind"),
        (f"urn:pleo:company:{ID}x", "does not end in a UUID"),
        (f"urn:pleo:company:../{ID[3:]}", "does not end in a UUID"),
        (ID.replace("-", ""), "neither a UUID"),
        ("{" + ID + "}", "neither a UUID"),
        (ID[:-1] + "g", "neither a UUID"),
        # Digits of other scripts are no hex digits.
        ("٣" + ID[1:], "neither a UUID"),
        ("x" * 10_000, "10000 characters, neither a UUID"),
    ],
)
def test_a_string_that_names_no_company_is_refused_saying_why(value: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as refused:
        Company(value)
    message = str(refused.value)
    assert message.isprintable()
    assert len(message) < 300
    assert f"{len(value)} character" in message or not value
    if len(value) >= 3:
        assert value not in message


@pytest.mark.parametrize("value", [None, 42, ID.encode(), ["x"]])
def test_a_value_that_is_not_a_string_is_refused_naming_its_type(value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"not {type(value).__name__}"):
        Company(value)  # type: ignore[arg-type]


def test_the_refusal_is_a_value_error_too() -> None:
    with pytest.raises(ValueError, match="company"):
        Company("nope")


# -- values that are not a plain str or a real Company -----------------------------------
# Company's converter is the one choke point of every family key, path and file name:
# a caller's own str or Company subclass, or an object faking its class, must never
# choose the id (review H12, F1).


class SlicesElsewhere(str):
    """A str whose text is a valid company id, but whose slices say something else."""

    def __getitem__(self, key: Any) -> str:  # type: ignore[override]
        return "../outside"

    def lower(self) -> str:  # type: ignore[override]
        return "../outside"


class AnswersAnotherId(Company):
    """A Company subclass whose ``id`` is not the one it was checked with."""

    def __getattribute__(self, name: str) -> Any:
        if name in ("id", "urn"):
            return "../outside"
        return super().__getattribute__(name)


class PosesAsCompany:
    """Not a Company at all, but ``isinstance(x, Company)`` says it is."""

    __class__ = property(lambda self: Company)  # type: ignore[assignment]
    id = "../outside"


class PosesAsStr:
    """Not a str at all, but ``isinstance(x, str)`` says it is."""

    __class__ = property(lambda self: str)  # type: ignore[assignment]

    def __getitem__(self, key: Any) -> str:
        return "../outside"


def company_id_or_refusal(value: object) -> str:
    try:
        return Company(value).id  # type: ignore[arg-type]
    except ConfigurationError:
        return "refused"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: SlicesElsewhere(ID), id="str-subclass-slicing"),
        pytest.param(lambda: AnswersAnotherId(ID), id="company-subclass-id"),
        pytest.param(PosesAsCompany, id="class-property-impostor"),
        pytest.param(PosesAsStr, id="str-class-property-impostor"),
    ],
)
def test_a_company_id_is_always_a_lower_case_uuid_or_refused(make: Any) -> None:
    result = company_id_or_refusal(make())
    assert result == "refused" or CANONICAL_ID.fullmatch(result), result
    assert result == "refused" or type(result) is str


def test_a_str_subclass_and_a_company_subclass_give_the_id_of_the_text_they_hold() -> None:
    for value in (SlicesElsewhere(ID.upper()), AnswersAnotherId(ID)):
        company = Company(value)  # type: ignore[arg-type]
        assert type(company.id) is str
        assert company.id == ID
        assert company == Company(ID)


def test_a_str_subclass_company_cannot_put_a_token_file_outside_the_family_directory(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "grants"
    family = FileStore.family(directory)
    with contextlib.suppress(ConfigurationError):  # refusing it is fine
        family.store(SlicesElsewhere(ID)).save(new_tokens())
    escaped = sorted(p.name for p in tmp_path.iterdir() if p.name != "grants")
    assert escaped == [], f"files written outside {directory}: {escaped}"


def test_a_refresh_token_passed_as_a_company_is_not_repeated_in_the_error() -> None:
    # Arguments swapped by mistake (integration.add(tokens.refresh_token, company)).
    refresh_token = Emulator().issue_tokens()["refresh_token"]
    with pytest.raises(ConfigurationError) as caught:
        Company(refresh_token)
    repeated = refresh_token[:20] in str(caught.value)
    assert not repeated, "Company's error repeats the refresh token it was given"
    assert f"{len(refresh_token)} characters" in str(caught.value)
