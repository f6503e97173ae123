from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_password_grant_then_order_listing(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/auth/oauth/v2/token",
        data={
            "client_id": "glocalflexmarket_public_api",
            "grant_type": "password",
            "username": "alice",
            "password": "alice-pw",
        },
    )
    assert r.status_code == 200
    token = r.json()["access_token"]
    r = await http.get("/api/v1/order", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json() == []
