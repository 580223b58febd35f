"""What authentication costs through a real Envoy, in one run, measured with wrk (Debian package) on loopback:
a bare route, a route behind Envoy's own jwt_authn (native, RS256), and a route that also runs a Python
policy in `xgate authz` (ext_authz over gRPC).

    .venv/bin/python bench/auth.py [--seconds 5] [--connections 32] [--threads 1] [--rounds 2]

All routes answer with a direct response, so the figures are Envoy's (and the policy service's) work. Routes
are measured alternately, `--rounds` times each, on one Envoy; the table shows each run and each route's
share of the bare route's best rate. Every request carries the same valid token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from _wrk import best_table, have_wrk, wrk
from xgate.authz.config import run_authz
from xgate.testing import free_port, run_gateway

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"


def setup() -> tuple[dict[str, Any], str]:
    """An RSA key pair: the public JWKS for the config, and a token signed with the private key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(alg="RS256", kid="bench")
    claims = {"iss": "https://bench.test", "sub": "bench", "roles": ["admin"], "exp": int(time.time()) + 3600}
    return {"keys": [jwk]}, jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})


def config(port: int, authz: int, jwks: dict[str, Any]) -> str:
    return json.dumps({
        "plugins": {
            "jwt": {"providers": [{"name": "main", "issuer": "https://bench.test", "jwks": jwks}]},
            "policy": {"policies": {"admins": "xgate_example_policies:allow_admins"}, "service": f"127.0.0.1:{authz}"},
        },
        "listeners": [{"name": "public", "address": "127.0.0.1", "port": port}],
        "routes": [
            {"name": "bare", "match": {"path": {"exact": "/bare"}}, "direct_response": {"status": 200, "body": "ok"},
             "plugins": {"jwt": False}},
            {"name": "jwt", "match": {"path": {"exact": "/jwt"}}, "direct_response": {"status": 200, "body": "ok"}},
            {"name": "policy", "match": {"path": {"exact": "/policy"}},
             "direct_response": {"status": 200, "body": "ok"}, "plugins": {"policy": {"name": "admins"}}},
        ],
    })  # fmt: skip


async def main(args: argparse.Namespace) -> int:
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    sys.path.insert(0, str(EXAMPLES))
    jwks, token = setup()
    port, authz = free_port(), free_port()
    stop = asyncio.Event()
    results: dict[str, list[tuple[float, float]]] = {"bare": [], "jwt": [], "policy": []}
    with tempfile.TemporaryDirectory(prefix="xgate-bench-auth-") as work:
        text = config(port, authz, jwks)
        path = Path(work) / "auth.json"
        path.write_text(text)
        service = asyncio.create_task(run_authz(path, listen=("127.0.0.1", authz), stop=stop))
        async with run_gateway(text, Path(work) / "gw"):
            headers = [f"Authorization: Bearer {token}"]
            for _ in range(args.rounds):
                for route in results:
                    url = f"http://127.0.0.1:{port}/{route}"
                    run = await asyncio.to_thread(wrk, url, args.seconds, args.connections, args.threads, headers)
                    results[route].append(run)
        stop.set()
        await service
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, Envoy --concurrency 1, direct responses")
    print(best_table(results, "bare"))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    sys.exit(asyncio.run(main(parser.parse_args())))
