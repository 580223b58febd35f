"""`python -m xgate`."""

from __future__ import annotations

from xgate.cli.main import main

main()
