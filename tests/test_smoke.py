"""The smallest end-to-end path: discovery and a hook call through the real app."""


def test_discovery_lists_one_service_per_hook(client):
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    hooks = {s["hook"] for s in resp.get_json()["services"]}
    assert {"patient-view", "order-sign", "order-select"} <= hooks


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
