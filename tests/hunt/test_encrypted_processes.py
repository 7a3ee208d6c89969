"""Key rotation under load: four real processes refresh short-lived grants of an
encrypted family (a file family, a Redis family on a private redis-server) against
the emulator while ``pleo-auth rotate-key`` runs, again and again, in processes of
its own, with the new key put first. Nothing may be lost: no rejected refresh, no
reuse detection, no caller error, every grant alive afterwards and all of it
under the new key alone."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from support.encrypted_workers import EncryptedFamilySpec
from support.integration_helpers import grant, new_companies
from support.integration_workers import run_load
from test_integration_processes import LIFETIME, MARGIN, client_of, rotation_bounds

from pleo_auth import PleoSession
from pleo_auth.stores.base import save_login
from pleo_auth.stores.encrypted import PREFIX, EncryptedStoreFamily
from pleo_auth.testing import Emulator

# Test keys only (Fernet.generate_key()): the grants start under OLD; NEW is put first.
OLD = "BvFGZy42bxMERr7Sg2gITFfnTz4knMvquk6LrGwkAAg="
NEW = "2tPJmcelxaODDqGQdyi9wD2JSUbMC8bhRsGs2iraMf8="

PLEO_AUTH = str(Path(sys.executable).with_name("pleo-auth"))


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.soak)])
def family_spec(
    request: pytest.FixtureRequest, tmp_path: Path, emulator: Emulator
) -> EncryptedFamilySpec:
    if request.param == "file":
        return EncryptedFamilySpec("file", str(tmp_path / "grants"), client_id=emulator.client_id)
    return EncryptedFamilySpec(
        "redis",
        request.getfixturevalue("redis_url"),
        f"t:{uuid.uuid4().hex}:",
        client_id=emulator.client_id,
    )


def rotate_key(spec: EncryptedFamilySpec, client_id: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PLEO_AUTH_KEYS": f"{NEW},{OLD}",
        "PLEO_CLIENT_ID": client_id,
    }
    return subprocess.run(
        [PLEO_AUTH, "rotate-key", "--store", spec.cli_spec()],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_rotate_key_under_four_refreshing_processes_loses_nothing(
    emulator: Emulator, family_spec: EncryptedFamilySpec
) -> None:
    emulator.set_access_token_lifetime(LIFETIME)
    companies = new_companies(10)
    duration = 9.0
    seeded: list[float] = []
    rotations: list[subprocess.CompletedProcess[str]] = []
    stop = threading.Event()

    def rotate_while_loaded() -> None:
        while not stop.is_set():
            rotations.append(rotate_key(family_spec, emulator.client_id))

    rotator = threading.Thread(target=rotate_while_loaded, daemon=True)

    def seed() -> None:
        seeded.append(time.time())
        old_family = dataclasses.replace(family_spec, keys=(OLD,)).build()
        for company in companies:
            save_login(old_family.store(company), grant(emulator, company, now=time.time()))
        rotator.start()

    try:
        results = run_load(
            client_of(emulator, refresh_margin=MARGIN),
            dataclasses.replace(family_spec, keys=(NEW, OLD)),
            companies,
            processes=4,
            threads=8,
            duration=duration,
            seed=seed,
        )
    finally:
        stop.set()
        rotator.join(180)
    assert rotations, "rotate-key never ran"
    for done in rotations:
        assert done.returncode == 0, done.stderr
        assert f"{len(companies)} grant(s) re-encrypted" in done.stdout, done.stdout
        assert "0 failed" in done.stdout
    fewest, most = rotation_bounds(LIFETIME, MARGIN, duration, span=time.time() - seeded[0])
    assert fewest >= 3, "the run is too short to prove anything"
    counters = emulator.counters
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    assert [r["errors"] for r in results] == [{}] * 4, [r["samples"] for r in results]
    assert all(r["calls"] > 0 for r in results)
    per_grant = [emulator.counters_for(company).refresh_grants for company in companies]
    assert fewest <= min(per_grant), (min(per_grant), fewest)
    assert max(per_grant) <= most, (max(per_grant), most)

    # All of it under the new key alone, and every grant alive.
    new_only = dataclasses.replace(family_spec, keys=(NEW,)).build()
    assert isinstance(new_only, EncryptedStoreFamily)
    assert sorted(c.id for c in new_only.companies()) == sorted(companies)
    for company in companies:
        store = new_only.for_company(company)
        assert store.load() is not None
        raw = _raw(family_spec, company)
        assert raw.startswith(PREFIX)
        assert new_only._keys.which(raw[len(PREFIX) :].encode()) == 0
    before = emulator.counters.refresh_grants
    for company in companies:
        with PleoSession(
            emulator.client_id,
            emulator.client_secret,
            store=new_only.for_company(company),
            token_url=emulator.token_url,
            api_url=emulator.api_url,
        ) as session:
            session.refresh()
            assert session.get("/v2/employees").status_code == 200
    assert emulator.counters.refresh_grants == before + len(companies)
    assert emulator.counters.rejected_refreshes == 0


def _raw(spec: EncryptedFamilySpec, company: str) -> str:
    """What the store keeps for ``company``, read around pleo_auth."""
    if spec.kind == "file":
        return (Path(spec.where) / f"{company}.json").read_text()
    import redis

    with redis.Redis.from_url(spec.where) as client:
        value = client.hget(f"{spec.prefix}company:{company}", "tokens")
    assert isinstance(value, bytes)
    return value.decode()
