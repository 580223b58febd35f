"""The example policies are importable in golden tests: the control plane imports the policies a config names
(to lower declarative ones to Envoy), as it does where it runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"


@pytest.fixture(autouse=True)
def example_policies(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
