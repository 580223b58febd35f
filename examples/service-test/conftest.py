"""The orders service's test setup: xgate's pytest plugin (installed with xgate) gives the `xgate_gateway`
fixture; this folder holds the service and its policies, so the tests and the gateway's authz import them here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # `import orders` from the tests, however pytest imports them


@pytest.fixture(scope="session")
def xgate_pythonpath() -> list[Path]:
    """Where the gateway's authz service finds orders_policies."""
    return [HERE]
