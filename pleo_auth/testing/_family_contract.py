"""The contract every :class:`~pleo_auth.TokenStoreFamily` honours, as one test
class that each family's tests subclass, as :class:`TokenStoreContract` is for stores.

Like that contract, this module imports pytest: it is loaded only when
:class:`TokenStoreFamilyContract` is first read from :mod:`pleo_auth.testing`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import threading
from collections.abc import Callable

import pytest

from pleo_auth import Company, ConfigurationError, TokenStoreFamily

from ._contract import MakeStore, TokenStoreContract, new_tokens

__all__ = ["BAD_COMPANIES", "MakeFamily", "TokenStoreFamilyContract"]

#: What a family contract's ``make_family`` fixture returns: each call gives a handle
#: on the same stored grants.
MakeFamily = Callable[[], TokenStoreFamily]


_A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")
_B = Company("7f3c2d1e-0a9b-4c8d-8e7f-6a5b4c3d2e1f")
_C = Company("c0ffee00-1234-4abc-8def-0123456789ab")

#: Strings (and non-strings) that name no company, each refused by every family.
BAD_COMPANIES: tuple[object, ...] = (
    "",
    " ",
    "*",
    "?",
    "[a-z]*",
    "..",
    "../" + _A.id,
    "/etc/passwd",
    f"{_A.id}/..",
    f"{_A.id}*",
    f" {_A.id}",
    f"{_A.id}\n",
    f"{_A.id}\x00",
    f"{_A.id}\r\nSET x y",
    "\x1b[31m",
    f"urn:pleo:user:{_A.id}",
    f"urn:pleo:company:{_A.id}:lock",
    _A.id.replace("-", ""),
    None,
    42,
    _A.id.encode(),
)


def _save_in_child(
    make_family: MakeFamily, company: str, rounds: int, barrier: multiprocessing.synchronize.Barrier
) -> None:
    """In a child process: save ``rounds`` generations of ``company``'s grant, each
    fenced on the one before, starting at the same moment as the other children."""
    store = make_family().store(company)
    barrier.wait(60)
    previous = None
    for generation in range(1, rounds + 1):
        tokens = new_tokens(f"{Company(company).id}-{generation}")
        with store.lock(timeout=60.0, lease=60.0):
            store.save(tokens, replaces=previous)
        previous = tokens


class TokenStoreFamilyContract(TokenStoreContract):
    """Tests that hold for every :class:`~pleo_auth.TokenStoreFamily`.

    A family's tests subclass it and provide one fixture, ``make_family``: a
    callable whose every call gives a handle on the same stored grants (a fresh
    object where the backend can have two, as two processes would). The whole
    :class:`TokenStoreContract` runs over one member of the family, and the tests
    here check the family: isolation between companies, :meth:`companies
    <pleo_auth.TokenStoreFamily.companies>`, :meth:`remove
    <pleo_auth.TokenStoreFamily.remove>`, the refusal of strings that name no
    company, and two real processes saving for two companies at the same moment::

        class TestMyFamily(TokenStoreFamilyContract):
            @pytest.fixture
            def make_family(self, tmp_path):
                return functools.partial(MyFamily, tmp_path)

    For the process test, ``make_family`` must be picklable (a
    :func:`functools.partial` of an importable function, not a lambda): children
    are started with the ``spawn`` method. A family whose grants no other process
    can reach sets :attr:`across_processes` to False.
    """

    #: Whether other processes reach the same grants (False: memory).
    across_processes = True
    #: Whether each company has its own refresh lock (False: one lock for the family).
    lock_per_company = True
    #: Fenced saves per child in the two-process test.
    rounds_per_process = 20

    @pytest.fixture
    def make_family(self) -> MakeFamily:
        raise NotImplementedError("subclasses override the make_family fixture")

    @pytest.fixture
    def family(self, make_family: MakeFamily) -> TokenStoreFamily:
        return make_family()

    @pytest.fixture
    def make_store(self, make_family: MakeFamily) -> MakeStore:
        return lambda: make_family().store(_A)

    # -- companies ------------------------------------------------------------------

    def test_a_new_family_lists_no_companies(self, family: TokenStoreFamily) -> None:
        assert family.companies() == []

    def test_companies_lists_exactly_those_with_a_stored_grant_sorted(
        self, family: TokenStoreFamily
    ) -> None:
        for company in (_C, _A, _B):
            family.store(company).save(new_tokens())
        family.store(_B).clear()
        assert family.companies() == [_A, _C]
        assert all(type(company) is Company for company in family.companies())

    def test_companies_saved_through_one_handle_are_listed_by_another(
        self, make_family: MakeFamily
    ) -> None:
        make_family().store(_B).save(new_tokens())
        assert make_family().companies() == [_B]

    def test_the_id_in_any_case_and_the_urn_name_the_same_grant(
        self, family: TokenStoreFamily
    ) -> None:
        tokens = new_tokens()
        family.store(_A.id.upper()).save(tokens)
        assert family.store(_A.urn).load() == tokens
        assert family.store(_A).key == family.store(_A.urn.upper()).key
        assert family.companies() == [_A]

    def test_stores_of_two_companies_have_different_keys(self, family: TokenStoreFamily) -> None:
        assert family.store(_A).key != family.store(_B).key

    # -- isolation -----------------------------------------------------------------

    def test_a_save_for_one_company_never_touches_another(self, family: TokenStoreFamily) -> None:
        first, second = family.store(_A), family.store(_B)
        kept = new_tokens()
        first.save(kept)
        version = first.version()
        assert second.load() is None
        second.save(new_tokens())
        second.save(new_tokens())
        assert first.load() == kept
        assert first.version() == version

    def test_a_clear_for_one_company_never_touches_another(self, family: TokenStoreFamily) -> None:
        kept = new_tokens()
        family.store(_A).save(kept)
        family.store(_B).save(new_tokens())
        version = family.store(_A).version()
        family.store(_B).clear()
        assert family.store(_A).load() == kept
        assert family.store(_A).version() == version
        assert family.store(_B).load() is None

    def test_holding_one_companys_lock_never_blocks_another(self, family: TokenStoreFamily) -> None:
        if not self.lock_per_company:
            pytest.skip(f"{type(family).__name__} has one lock for the family")
        with family.store(_A).lock(timeout=5.0, lease=30.0):
            done = threading.Event()

            def other() -> None:
                with family.store(_B).lock(timeout=5.0, lease=30.0):
                    done.set()

            thread = threading.Thread(target=other)
            thread.start()
            thread.join(30)
            assert done.is_set()

    # -- remove ----------------------------------------------------------------------

    def test_remove_deletes_that_companys_grant_only(self, family: TokenStoreFamily) -> None:
        kept = new_tokens()
        family.store(_A).save(new_tokens())
        family.store(_B).save(kept)
        family.remove(_A.urn)
        assert family.store(_A).load() is None
        assert family.store(_B).load() == kept
        assert family.companies() == [_B]

    def test_remove_of_a_company_without_a_grant_changes_nothing(
        self, family: TokenStoreFamily
    ) -> None:
        kept = new_tokens()
        family.store(_B).save(kept)
        family.remove(_A)
        assert family.companies() == [_B]
        assert family.store(_B).load() == kept

    def test_a_removed_company_can_log_in_again(self, family: TokenStoreFamily) -> None:
        family.store(_A).save(new_tokens())
        family.remove(_A)
        again = new_tokens()
        family.store(_A).save(again)
        assert family.store(_A).load() == again
        assert family.companies() == [_A]

    # -- bad company strings ----------------------------------------------------------

    @pytest.mark.parametrize("bad", BAD_COMPANIES, ids=repr)
    def test_a_string_that_names_no_company_is_refused_and_touches_nothing(
        self, family: TokenStoreFamily, bad: object
    ) -> None:
        for call in (family.store, family.remove):
            with pytest.raises(ConfigurationError) as refused:
                call(bad)  # type: ignore[arg-type]
            message = str(refused.value)
            assert message.isprintable(), "the message repeats a control character"
        assert family.companies() == []

    # -- secrets --------------------------------------------------------------------

    def test_describe_and_repr_of_the_family_never_show_a_token(
        self, family: TokenStoreFamily
    ) -> None:
        tokens = new_tokens()
        family.store(_A).save(tokens)
        for text in (repr(family), str(family), family.describe()):
            assert tokens.access_token not in text
            assert tokens.refresh_token not in text

    # -- processes ----------------------------------------------------------------------

    def test_two_processes_saving_for_two_companies_at_once_each_keep_their_grant(
        self, make_family: MakeFamily
    ) -> None:
        if not self.across_processes:
            pytest.skip("no other process reaches this family's grants")
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(2)
        rounds = self.rounds_per_process
        children = [
            context.Process(target=_save_in_child, args=(make_family, company.urn, rounds, barrier))
            for company in (_A, _B)
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(180)
        assert [child.exitcode for child in children] == [0, 0]
        family = make_family()
        assert family.companies() == [_A, _B]
        for company in (_A, _B):
            assert family.store(company).load() == new_tokens(f"{company.id}-{rounds}")
