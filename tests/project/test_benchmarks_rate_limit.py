"""Smoke test of benchmark part 11 (the hot path with the rate limit on): at its
quick size it measures both stores with and without the limit, gives a verdict
for each, and times a take from every shared bucket."""

from __future__ import annotations

from benchmarks import __main__ as cli
from benchmarks import rate_limit


def test_rate_limit_part_measures_both_stores_with_and_without_the_limit() -> None:
    section = rate_limit.run(rate_limit.RateLimitConfig.quick())
    hot, takes = section.tables
    names = [row[0] for row in hot.rows]
    assert names == [
        "PleoSession + FileStore, no limit (today's)",
        "PleoSession + FileStore, rate_limit on, unsaturated",
        "PleoSession + RedisStore, no limit (today's)",
        "PleoSession + RedisStore, rate_limit on, unsaturated",
    ]
    assert [row[0] for row in takes.rows] == [
        "in this process (MemoryStore)",
        "file (FileStore, KeyringStore)",
        "Redis (RedisStore), loopback",
    ]
    assert len(section.verdicts) == 2
    assert all(verdict.met is not None for verdict in section.verdicts)
    assert cli.chosen_parts(["issue15"]) == ["observability", "rate_limit"]
