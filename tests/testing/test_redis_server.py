"""pleo_auth.testing.redis_server: a private server, never a stranger's."""

from __future__ import annotations

import itertools

import pytest
import redis

from pleo_auth.testing import _redis, redis_server


@pytest.mark.redis
def test_a_port_taken_by_another_server_before_ours_binds_it_is_never_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with redis_server() as stranger:
        taken = int(stranger.rsplit(":", 1)[1].split("/")[0])
        stranger_pid = redis.Redis.from_url(stranger).info("server")["process_id"]
        ports = itertools.chain([taken], iter(_redis.free_port, None))
        # The race, made certain: the port picked is one another server already holds.
        monkeypatch.setattr(_redis, "free_port", lambda: next(ports))
        with redis_server() as ours:
            assert ours != stranger
            client = redis.Redis.from_url(ours)
            assert client.info("server")["process_id"] != stranger_pid
            client.set("mine", "1")
        assert redis.Redis.from_url(stranger).get("mine") is None
