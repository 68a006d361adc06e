"""Trajectory jobs: the result is the library's simulation at the same seed, the mean-field
curve is the library's, and a cancel stops the server-side work (not only the page's wait)."""

import time

import numpy as np
import pytest

import moebif
from moebif import RouterParams

POST = {"x-moebif": "1"}


def _wait(client, job_id, states=("done", "cancelled", "failed"), timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.get(f"/api/trajectories/{job_id}").json()
        if s["state"] in states:
            return s
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {s['state']}")


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_trajectory_is_the_librarys_simulation(client, rho):
    q = {"a": 3.0, "h": 0.08, "y0": 0.2, "strength": rho, "batch": 512, "eta": 0.002}
    q |= {"steps": 3000, "runs": 12, "seed": 7}
    r = client.post("/api/trajectories", params=q, headers=POST)
    assert r.status_code == 202, r.text
    s = _wait(client, r.json()["id"])
    assert s["state"] == "done", s
    res = s["result"]
    p = RouterParams(a=3.0, gamma=1.0, T=1.0, h=0.08)
    ref = moebif.simulate_batch_router(
        p, batch=512, eta=0.002, steps=3000, runs=12, seed=7, rho=rho, y0=0.2, record_every=6
    )
    assert s["settings"]["record_every"] == 6
    np.testing.assert_array_equal(res["t"], ref.t)
    np.testing.assert_array_equal(res["u_mean"], ref.u_mean)  # same seed, same numbers
    np.testing.assert_array_equal(res["u_std"], ref.u_std)
    np.testing.assert_array_equal(res["u_runs"], ref.u_hat[:8])
    # the mean field of the run, by the library's own rho path
    mf = moebif.solve_meanfield(p, ref.t, y0=0.2, rho=rho)
    np.testing.assert_allclose(res["u_meanfield"], mf, rtol=1e-9, atol=1e-12)
    assert res["sup_error"] == pytest.approx(np.max(np.abs(ref.u_mean - mf)), rel=1e-6)
    assert res["sup_error"] < 0.1  # B = 512, eta = 0.002: the ensemble follows the mean field
    # and the export of the run
    e = client.get("/api/export", params={"view": "trajectory", "job": s["id"], "format": "csv"})
    assert e.status_code == 200
    assert e.text.splitlines()[0].startswith("table,t,u_mean,u_std,u_meanfield,u_run_0")
    assert len(e.text.splitlines()) == 1 + len(ref.t)


def test_cancel_stops_the_simulation_on_the_server(client):
    runner = client.app_state["runner"]
    q = {"a": 3.0, "batch": 4096, "eta": 0.001, "steps": 10_000_000, "runs": 400}
    r = client.post("/api/trajectories", params=q, headers=POST)
    assert r.status_code == 202
    jid = r.json()["id"]
    job = runner.get(jid)
    deadline = time.monotonic() + 60
    while job.done_steps == 0 and time.monotonic() < deadline:  # running, past its first chunk
        time.sleep(0.01)
    assert job.state == "running" and job.done_steps > 0
    c = client.post(f"/api/trajectories/{jid}/cancel", headers=POST)
    assert c.status_code == 200
    assert job.finished_flag.wait(10.0)  # the worker left the simulator within a chunk
    assert job.state == "cancelled" and job.result is None
    assert 0 < job.done_steps < q["steps"]
    calls = job.progress_calls
    cpu0 = time.process_time()
    time.sleep(0.5)
    # no more progress and no CPU burnt by numba threads (a live run uses ~1 s of CPU in 0.5 s)
    assert job.progress_calls == calls
    assert time.process_time() - cpu0 < 0.25
    s = client.get(f"/api/trajectories/{jid}").json()
    assert s["state"] == "cancelled" and "result" not in s


def test_a_new_request_cancels_the_running_one(client):
    runner = client.app_state["runner"]
    big = {"a": 3.0, "steps": 10_000_000, "runs": 400}
    first = runner.get(client.post("/api/trajectories", params=big, headers=POST).json()["id"])
    second = client.post("/api/trajectories", params={"steps": 200, "runs": 2}, headers=POST)
    s = _wait(client, second.json()["id"])
    assert s["state"] == "done"
    assert first.finished_flag.wait(10.0) and first.state == "cancelled"


@pytest.mark.parametrize(
    "q,param,msg",
    [
        ({"eta": "2.5"}, "eta", "eta"),
        ({"eta": "0"}, "eta", "eta"),
        ({"steps": "0"}, "steps", "steps: must be in 1.."),
        ({"steps": "1e3"}, "steps", "steps: must be an integer"),
        ({"runs": "100000"}, "runs", "runs: must be in 1..4000"),
        ({"batch": "0"}, "batch", "batch: must be in 1.."),
        ({"seed": "-1"}, "seed", "seed: must be in 0.."),
        ({"runs": "4000", "steps": "2000000"}, "runs", "runs x steps must be <="),
        ({"T": "0"}, "T", "T: must be > 0"),
        ({"view": "state"}, "view", "unknown parameter 'view'"),
    ],
)
def test_bad_trajectory_settings_are_400(client, q, param, msg):
    r = client.post("/api/trajectories", params=q, headers=POST)
    assert r.status_code == 400, r.text
    assert msg in r.json()["error"] and r.json()["param"] == param


def test_post_needs_the_explorer_header_and_jobs_must_exist(client):
    assert client.post("/api/trajectories", params={"steps": 10}).status_code == 403
    assert client.get("/api/trajectories/t999").status_code == 404
    assert client.post("/api/trajectories/t999/cancel", headers=POST).status_code == 404
    r = client.get("/api/trajectories")  # only POST starts a job
    assert r.status_code == 405 and r.json()["error"]


def test_stack_balancer_views_and_trajectory(client, get_views):
    """The Megatron aux loss in the explorer: its views are the near-balance router
    (a_eff = a - alpha/T), its trajectory is the stochastic router with the scheme itself."""
    a, T, alpha = 3.5, 0.8, 0.4
    bal = get_views(a=a, T=T, h=0.1, balancer="aux-megatron", strength=alpha, N=8)
    ref = get_views(a=a - alpha / T, T=T, h=0.1, strength=0, N=8)
    assert bal["views"]["state"]["equilibria"] == ref["views"]["state"]["equilibria"]
    assert bal["point"]["a_eff"] == pytest.approx(a - alpha / T, rel=1e-12)
    q = {"a": a, "T": T, "h": 0.08, "y0": 0.2, "balancer": "aux-megatron", "strength": alpha}
    q |= {"batch": 256, "eta": 0.01, "steps": 400, "runs": 4, "seed": 3}
    r = client.post("/api/trajectories", params=q, headers=POST)
    assert r.status_code == 202, r.text
    s = _wait(client, r.json()["id"])
    assert s["state"] == "done", s
    p = RouterParams(a=a, gamma=1.0, T=T, h=0.08)
    want = moebif.simulate_batch_router(
        p,
        batch=256,
        eta=0.01,
        steps=400,
        runs=4,
        seed=3,
        y0=0.2,
        record_every=s["settings"]["record_every"],
        balancer=f"aux-megatron:{alpha}",
    )
    np.testing.assert_array_equal(s["result"]["u_mean"], want.u_mean)
    # a strength beyond a's near-balance equivalent is a clear error naming the strength
    r = client.get("/api/views", params={"a": 0.2, "balancer": "aux-megatron", "strength": 4})
    assert r.status_code == 400 and "strength" in r.text
