"""Fixtures of the explorer's tests: the app behind a test client, and a real server in a thread
for the browser tests."""

import pytest

pytest.importorskip("starlette", reason="the explore extra is not installed")
pytest.importorskip("uvicorn", reason="the explore extra is not installed")


@pytest.fixture(scope="module")
def client():
    from starlette.testclient import TestClient

    from moebif.explore.server import create_app

    app = create_app(warm_up=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.app_state = app.state.explore
        yield c


@pytest.fixture(scope="module")
def get_views(client):
    """``get_views(**query)``: GET /api/views, assert a 200, return the JSON."""

    def get(**q):
        r = client.get("/api/views", params=q)
        assert r.status_code == 200, r.text
        return r.json()

    return get
