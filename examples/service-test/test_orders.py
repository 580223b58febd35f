"""The orders service tested behind a real gateway: Envoy verifies the JWT, xgate's authz runs the team's
Python policy, and only what both let through reaches the service. `pytest` runs the gateway as local
processes; `pytest --xgate-gateway=containers` (or XGATE_GATEWAY=containers) as containers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from orders import OrdersService

from xgate.testing.stack import GatewayUnderTest

ISSUER = "https://auth.example.test"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # the test's own identity provider


def token(subject: str, scope: str, *, audience: str = "orders", lifetime: float = 300) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": audience, "sub": subject, "scope": scope, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "test"})


def gateway_config(gateway: GatewayUnderTest, service: OrdersService) -> dict[str, Any]:
    public = {**jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "test", "alg": "RS256"}
    return {
        "plugins": {
            "jwt": {
                "providers": [
                    {
                        "name": "auth",
                        "issuer": ISSUER,
                        "audiences": ["orders"],
                        "jwks": {"keys": [public]},
                        "forward_claims": {"sub": "x-user"},
                    }
                ]
            },
            "policy": {
                "service": gateway.services["authz"],
                "policies": {"orders": "orders_policies:can_write_orders"},
            },
        },
        "upstreams": [{"name": "orders", "endpoints": [f"{service.host}:{service.port}"]}],
        "routes": [
            {
                "name": "orders",
                "match": {"path": {"prefix": "/orders"}},
                "upstream": "orders",
                "plugins": {"jwt": {"provider": "auth"}, "policy": {"name": "orders"}},
            }
        ],
    }


@pytest.fixture(scope="module")
def service(xgate_gateway: GatewayUnderTest) -> Iterator[OrdersService]:
    orders = OrdersService(xgate_gateway.upstream_host)  # where the gateway's Envoy reaches this process
    xgate_gateway.apply(gateway_config(xgate_gateway, orders))
    yield orders
    orders.stop()


@pytest.fixture
def client(xgate_gateway: GatewayUnderTest) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=xgate_gateway.url, timeout=10) as client:
        yield client


def test_a_request_without_a_token_never_reaches_the_service(service: OrdersService, client: httpx.Client) -> None:
    before = len(service.seen)
    response = client.get("/orders")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert len(service.seen) == before


def test_a_reader_lists_orders_as_themselves(service: OrdersService, client: httpx.Client) -> None:
    response = client.get("/orders", headers={"authorization": f"Bearer {token('ana', 'orders:read')}"})
    assert response.status_code == 200
    assert "orders" in response.json()
    seen = {name.lower(): value for name, value in service.seen[-1].items()}
    assert seen["x-user"] == "ana"  # the verified subject, forwarded by the gateway
    assert "authorization" not in seen  # the token itself stays at the gateway


def test_the_policy_keeps_readers_from_creating_orders(service: OrdersService, client: httpx.Client) -> None:
    count = len(service.orders)
    reader = token("bo", "orders:read")
    response = client.post("/orders", json={"item": "tea"}, headers={"authorization": f"Bearer {reader}"})
    assert response.status_code == 403
    assert response.text == "creating orders needs the orders:write scope"
    assert len(service.orders) == count


def test_a_writer_creates_an_order_in_their_name(service: OrdersService, client: httpx.Client) -> None:
    writer = token("cy", "orders:read orders:write")
    response = client.post("/orders", json={"item": "tea"}, headers={"authorization": f"Bearer {writer}"})
    assert response.status_code == 201
    assert response.json()["by"] == "cy"
    assert service.orders[-1] == response.json()


@pytest.mark.parametrize(
    "bad",
    [token("dee", "orders:write", lifetime=-120), token("dee", "orders:write", audience="billing")],
    ids=["expired", "other-audience"],
)
def test_tokens_the_gateway_refuses(service: OrdersService, client: httpx.Client, bad: str) -> None:
    before = len(service.seen)
    response = client.post("/orders", json={"item": "tea"}, headers={"authorization": f"Bearer {bad}"})
    assert response.status_code in (401, 403)
    assert len(service.seen) == before
