#!/opt/xgate/bin/python3
"""Health check of xgate's containers: `xgate-probe URL` exits 0 when GET URL answers 2xx within 2 s, else 1."""

import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as exc:  # any failure is "unhealthy"; say why, for `podman healthcheck run` and inspect
    print(f"xgate-probe: {sys.argv[1]}: {exc}", file=sys.stderr)
    sys.exit(1)
