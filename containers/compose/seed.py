"""Seed etcd with compose's example config once: only while xgate's prefix holds no object, so a later `up`
never overwrites a config changed since. Exits non-zero while etcd is unreachable; compose then restarts it."""

import json
import subprocess
import sys

ETCD = "etcd:2379"
CONFIG = "/seed/gateway.yaml"

stored = subprocess.run(["xgate", "get", "--etcd", ETCD, "-o", "json"], capture_output=True, text=True)
if stored.returncode != 0:
    print(f"seed: etcd at {ETCD} not readable yet: {stored.stderr.strip()}", file=sys.stderr)
    sys.exit(stored.returncode)
if set(json.loads(stored.stdout)) - {"xgate"}:
    print(f"seed: etcd already holds a config; {CONFIG} not applied")
    sys.exit(0)
sys.exit(subprocess.run(["xgate", "apply", "-f", CONFIG, "--etcd", ETCD]).returncode)
