"""Company: Pleo's company id or URN, checked once, as the key of a grant."""

from __future__ import annotations

import pickle

import pytest

from pleo_auth import Company, ConfigurationError

ID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


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
        ("../etc/passwd", "'../etc/passwd' is neither a UUID"),
        ("..", "'..' is neither a UUID"),
        ("*", "'\\*' is neither a UUID"),
        ("pleo-auth:?", "is neither a UUID"),
        (f" {ID}", "it contains whitespace"),
        (f"{ID} ", "it contains whitespace"),
        (f"{ID}\n", "control or other unprintable character"),
        (f"{ID}\x00", "control or other unprintable character"),
        ("\x1b[2J", "control or other unprintable character"),
        (f"urn:pleo:user:{ID}", "a URN of another kind"),
        (f"urn:pleo:company:{ID}x", "does not end in a UUID"),
        (f"urn:pleo:company:../{ID[3:]}", "does not end in a UUID"),
        (ID.replace("-", ""), "is neither a UUID"),
        ("{" + ID + "}", "is neither a UUID"),
        (ID[:-1] + "g", "is neither a UUID"),
        # Digits of other scripts are no hex digits.
        ("٣" + ID[1:], "is neither a UUID"),
        ("x" * 10_000, "10000 characters long"),
    ],
)
def test_a_string_that_names_no_company_is_refused_saying_why(value: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as refused:
        Company(value)
    message = str(refused.value)
    assert message.isprintable()
    assert len(message) < 300


@pytest.mark.parametrize("value", [None, 42, ID.encode(), ["x"]])
def test_a_value_that_is_not_a_string_is_refused_naming_its_type(value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"not {type(value).__name__}"):
        Company(value)  # type: ignore[arg-type]


def test_the_refusal_is_a_value_error_too() -> None:
    with pytest.raises(ValueError, match="company"):
        Company("nope")
