"""Imported by the forkserver before it forks the workers: the workload runner,
through its public name, so no worker pays for its import."""

from pleo_auth.testing import run_workload

__all__ = ["run_workload"]
