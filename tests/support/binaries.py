"""The binaries tests need: fail (in CI) or skip (elsewhere) when one is missing."""

from __future__ import annotations

import os
import shutil

import pytest


def require(binary: str) -> str:
    """The path of ``binary``: a failure in CI, where .ci/run installs it, else a skip."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not installed; .ci/run should have installed it")
        pytest.skip(f"{binary} is not installed")
    return path
