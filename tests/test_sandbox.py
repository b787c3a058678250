"""The Salesforce sandbox over real HTTPS: shapes as Salesforce documents them."""

from __future__ import annotations

import httpx

from crmsync.sandbox.server import Sandbox

from sfsandbox import API


def test_create_read_query_a_contact(sandbox: Sandbox, sf_client: httpx.Client) -> None:
    created = sf_client.post(f"{API}/sobjects/Contact", json={"LastName": "Smoke"})
    assert created.status_code == 201
    assert created.json()["success"] is True
    rows = sf_client.get(f"{API}/query", params={"q": "SELECT Id FROM Contact"}).json()
    assert created.json()["id"] in [r["Id"] for r in rows["records"]]
