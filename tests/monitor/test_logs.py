"""Router logs: format 2 (header per segment), resumed segments, torn lines, rotation, header-less
and other formats, layers with different N; ``moebif diagnose`` on all of them and on bad files
(exit 2, one line, never a traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moebif import RouterParams, simulate_topk_router
from moebif.monitor import LogError, read_log, write_log
from moebif.monitor.logs import LogWriter, data_line, log_files


def _counts(n=4, steps=400, kappa=0.5, seed=0, batch=256):
    p = RouterParams(a=kappa * n, gamma=1.0, T=1.0, n_experts=n)
    run = simulate_topk_router(p, batch=batch, eta=0.05, steps=steps, runs=1, seed=seed)
    return np.rint(run.loads[0] * batch).astype(np.int64)


def _spec(n, k=1, imp=False):
    return {
        "n_experts": n,
        "top_k": k,
        "router_class": "R",
        "importance": imp,
        "probabilities": "softmax" if imp else None,
    }


def _write(path, rows, layers, *, segment=0, start=0, **kw):
    """rows: {label: (S, N) counts}, written from step ``start`` on."""
    w = LogWriter(path, layers, segment=segment, start_step=start, **kw)
    S = len(next(iter(rows.values())))
    for i in range(S):
        w.write_step(
            start + i, [data_line(start + i, lab, c[i].tolist()) for lab, c in rows.items()]
        )
    w.close()


# --------------------------------------------------------------------------------------------
# format 2


def test_header_gives_n_and_k_layers_may_differ_in_n(tmp_path):
    a, b = _counts(4, 100), _counts(6, 100, seed=1)
    imp = a / a.sum(1, keepdims=True)
    p = tmp_path / "log.jsonl"
    w = LogWriter(p, {"a": _spec(4, 2, True), "b": _spec(6, 1)}, model_class="M")
    for i in range(100):
        w.write_step(
            i,
            [
                data_line(i, "a", a[i].tolist(), imp[i].tolist(), tokens=128, dropped=3),
                data_line(i, "b", b[i].tolist()),
            ],
        )
    w.close()
    log = read_log(p)
    assert log.header["moebif_log"] == 2 and log.header["model_class"] == "M"
    assert [(s.segment, s.start_step) for s in log.segments] == [(0, 0)]
    la, lb = log.layers["a"], log.layers["b"]
    assert (la.n_experts, la.top_k, lb.n_experts, lb.top_k) == (4, 2, 6, 1)
    np.testing.assert_array_equal(la.counts, a)
    np.testing.assert_array_equal(lb.counts, b)
    np.testing.assert_allclose(la.importance, imp, rtol=1e-5)
    assert lb.importance is None and la.meta["probabilities"] == "softmax"
    assert (la.tokens == 128).all() and (la.dropped == 3).all() and lb.tokens is None


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_write_log_roundtrip_with_different_n(tmp_path, suffix):
    a, b = _counts(3, 30), _counts(5, 30, seed=2)
    steps = np.arange(10, 40)
    write_log(tmp_path / f"l{suffix}", steps, {"a": a, "b": b}, top_k={"a": 1, "b": 2})
    log = read_log(tmp_path / f"l{suffix}")
    np.testing.assert_array_equal(log.layers["a"].counts, a)
    np.testing.assert_array_equal(log.layers["b"].counts, b)
    np.testing.assert_array_equal(log.layers["b"].steps, steps)
    want_k = (1, 2) if suffix == ".jsonl" else (None, None)
    assert (log.layers["a"].top_k, log.layers["b"].top_k) == want_k


def test_resumed_segment_replaces_what_the_killed_run_logged_after_its_checkpoint(tmp_path):
    c = _counts(4, 120)
    p = tmp_path / "log.jsonl"
    _write(p, {"x": c[:90]}, {"x": _spec(4)})  # killed at step 89 ...
    with p.open("a") as fh:
        fh.write('{"step": 90, "layer": "x", "coun')  # ... in the middle of a line
    _write(p, {"x": c[70:]}, {"x": _spec(4)}, segment=1, start=70)  # resumed from step 70
    log = read_log(p)
    np.testing.assert_array_equal(log.layers["x"].steps, np.arange(120))
    np.testing.assert_array_equal(log.layers["x"].counts, c)
    assert [(s.segment, s.start_step) for s in log.segments] == [(0, 0), (1, 70)]
    assert any("torn" in w for w in log.warnings)
    assert any("20 lines" in w for w in log.warnings)


def test_torn_lines_only_at_the_end_of_a_segment(tmp_path):
    p = tmp_path / "log.jsonl"
    _write(p, {"x": _counts(4, 5)}, {"x": _spec(4)})
    with p.open("a") as fh:
        fh.write('{"step": 5, "lay')  # a killed writer, nobody resumed: no newline at the end
    assert read_log(p).layers["x"].steps.tolist() == [0, 1, 2, 3, 4]
    with p.open("a") as fh:
        fh.write('\n{"step": 6, "layer": "x", "counts": [1, 2, 3, 4]}\n')
    with pytest.raises(LogError, match="line 7, column"):
        read_log(p)


def test_header_errors_name_the_key(tmp_path):
    p = tmp_path / "log.jsonl"
    cases = {
        '{"moebif_log": 9, "layers": {}}': "newer",
        '{"moebif_log": 2, "layers": {"a": {"n_experts": 1, "top_k": 1}}}': "n_experts",
        '{"moebif_log": 2, "layers": {"a": {"n_experts": 4, "top_k": 4}}}': "top_k",
        '{"moebif_log": 2, "segment": -1, "layers": {}}': "segment",
    }
    for text, key in cases.items():
        p.write_text(text + "\n")
        with pytest.raises(LogError, match=key):
            read_log(p)
    h = {"moebif_log": 2, "segment": 0, "start_step": 0, "layers": {"a": _spec(4)}}
    p.write_text(json.dumps(h) + '\n{"step": 0, "layer": "b", "counts": [1, 2, 3, 4]}\n')
    with pytest.raises(LogError, match="not in the segment's header"):
        read_log(p)
    p.write_text(json.dumps(h) + '\n{"step": 0, "layer": "a", "counts": [1, 2, 3]}\n')
    with pytest.raises(LogError, match="3 experts, layer 'a' has 4"):
        read_log(p)


def test_rotation_keeps_the_size_and_reads_back_in_order(tmp_path):
    c = _counts(8, 3000, seed=3)
    p = tmp_path / "log.jsonl"
    _write(p, {"x": c}, {"x": _spec(8)}, max_bytes=20_000, backups=50)
    files = log_files(p)
    assert len(files) > 3 and files[-1] == p
    assert all(f.stat().st_size <= 20_000 for f in files)
    log = read_log(p)  # the whole set, oldest first
    np.testing.assert_array_equal(log.layers["x"].steps, np.arange(3000))
    np.testing.assert_array_equal(log.layers["x"].counts, c)
    assert [s.segment for s in log.segments] == [0]  # rotation continues the segment
    # few backups: the oldest steps are gone, the rest reads in order
    q = tmp_path / "capped" / "log.jsonl"
    _write(q, {"x": c}, {"x": _spec(8)}, max_bytes=20_000, backups=2)
    assert len(log_files(q)) == 3
    assert sum(f.stat().st_size for f in log_files(q)) <= 3 * 20_000
    back = read_log(q).layers["x"]
    assert back.steps[-1] == 2999 and back.steps[0] > 0
    np.testing.assert_array_equal(back.counts, c[back.steps])
    # a directory holding one log set is read; several are refused in one line
    assert read_log(q.parent).files == read_log(q).files
    _write(q.parent / "other.jsonl", {"x": c[:5]}, {"x": _spec(8)})
    with pytest.raises(LogError, match=r"2 logs \(log\.jsonl, other\.jsonl\); name one"):
        read_log(q.parent)


def test_headerless_formats_still_read(tmp_path):
    c = _counts(4, 50)
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"step": i, "counts": c[i].tolist()}) + "\n" for i in range(50))
    )
    log = read_log(tmp_path / "a.jsonl")
    assert log.header is None and log.layers["0"].top_k is None and log.layers["0"].n_experts == 4
    np.save(tmp_path / "b.npy", c)
    np.testing.assert_array_equal(read_log(tmp_path / "b.npy").layers["0"].counts, c)


# --------------------------------------------------------------------------------------------
# diagnose


def _sim_log(path, k=None, n=8, steps=3000):
    c = _counts(n, steps, kappa=0.5, seed=4)
    write_log(path, np.arange(steps), {"L0": c}, top_k=k)
    return c


def test_diagnose_takes_top_k_from_the_header(cli, tmp_path):
    p = tmp_path / "log.jsonl"
    _sim_log(p, k=2)
    r = cli("diagnose", p, "--out", tmp_path / "o", "--json")
    assert r.code == 0, r.err
    (layer,) = r.json["layers"]
    assert layer["top_k"] == 2 and layer["top_k_from"] == "header" and r.json["warnings"] == []
    r = cli("diagnose", p, "--out", tmp_path / "o", "--top-k", 1)
    assert r.code == 2 and "--top-k" in r.err and r.err.count("\n") == 1
    assert cli("diagnose", p, "--out", tmp_path / "o", "--top-k", 2, "--json").code == 0


def test_diagnose_without_header_says_it_assumes_top_1(cli, tmp_path):
    p = tmp_path / "log.csv"
    _sim_log(p)
    r = cli("diagnose", p, "--out", tmp_path / "o", "--json")
    assert r.code == 0
    assert r.json["layers"][0]["top_k"] == 1 and r.json["layers"][0]["top_k_from"] == "default"
    assert "warning:" in r.err and "--top-k" in r.err and "no header" in r.err
    r = cli("diagnose", p, "--out", tmp_path / "o", "--top-k", 3, "--json")
    assert r.code == 0 and r.json["layers"][0]["top_k_from"] == "--top-k" and r.err == ""


def test_diagnose_reads_rotated_segmented_logs_with_different_n(cli, tmp_path):
    a, b = _counts(4, 1200, seed=5), _counts(8, 1200, seed=6)
    layers = {"a": _spec(4), "b": _spec(8, 2)}
    p = tmp_path / "run" / "log.jsonl"
    _write(p, {"a": a[:700], "b": b[:700]}, layers, max_bytes=50_000, backups=20)
    _write(
        p, {"a": a[600:], "b": b[600:]}, layers, segment=1, start=600, max_bytes=50_000, backups=20
    )
    assert len(log_files(p)) > 2
    for target in (p, p.parent):
        r = cli("diagnose", target, "--out", tmp_path / "o", "--json")
        assert r.code == 0, r.err
        d = r.json
        assert [x["n_experts"] for x in d["layers"]] == [4, 8]
        assert [x["steps"] for x in d["layers"]] == [1200, 1200]
        assert [s["start_step"] for s in d["segments"]] == [0, 600]
        assert any("replaced" in w for w in d["warnings"])


_BAD = {
    "random.csv": bytes(range(256)) * 8,
    "random.jsonl": bytes((i * 97) % 256 for i in range(4096)),
    "random.npy": b"\x93NUMPY" + bytes(200),
    "random.npz": b"PK\x03\x04" + bytes(100),
    "utf16.csv": "step,e0,e1\n0,1,2\n1,2,1\n".encode("utf-16"),
    "latin1.jsonl": '{"step": 0, "layer": "caf\xe9", "counts": [1, 2]}\n'.encode("latin-1"),
    "empty.jsonl": b"",
    "header_only.jsonl": b'{"moebif_log": 2, "layers": {"a": {"n_experts": 4, "top_k": 1}}}\n',
    "not_object.jsonl": b"[1, 2, 3]\n",
    "nested.jsonl": b"[" * 100000 + b"\n",
    "huge.jsonl": b'{"step": 0, "counts": [1e308, 1]}\n',
    "inf.jsonl": b'{"step": 0, "counts": [1e400, 1]}\n',
    "nan.csv": b"step,e0,e1\n0,nan,1\n",
    "negative.jsonl": b'{"step": 0, "counts": [-1, 1]}\n',
    "bigstep.jsonl": b'{"step": 100000000000000000000, "counts": [1, 1]}\n',
    "control.jsonl": b'{"step": 0, "layer": "a\\nb", "counts": [1, 1]}\n',
    "object.npy": None,  # filled in below: a pickled object array
}


def _bad_file(tmp_path, name):
    p = tmp_path / name
    if name == "object.npy":
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        p.write_bytes(_BAD[name])
    return p


@pytest.mark.parametrize("name", sorted(_BAD))
def test_diagnose_bad_file_exits_2_with_one_line(cli, tmp_path, name):
    p = _bad_file(tmp_path, name)
    r = cli("diagnose", p, "--out", tmp_path / "o")
    assert r.code == 2, (r.out, r.err)
    assert r.err.count("\n") == 1 and "error: LOG: " in r.err and "Traceback" not in r.err


def test_diagnose_directory_zero_counts_and_missing_file(cli, tmp_path):
    d = tmp_path / "empty_dir"
    d.mkdir()
    for target, msg in (
        (d, "a directory with no router log"),
        (tmp_path / "nope.jsonl", "no such file"),
    ):
        r = cli("diagnose", target, "--out", tmp_path / "o")
        assert r.code == 2 and msg in r.err and r.err.count("\n") == 1
    z = tmp_path / "zero.jsonl"
    write_log(z, np.arange(200), {"a": np.zeros((200, 4), np.int64)}, top_k=1)
    r = cli("diagnose", z, "--out", tmp_path / "o")
    assert r.code == 2 and "all counts are zero" in r.err and r.err.count("\n") == 1


_SUFFIX = st.sampled_from([".csv", ".jsonl", ".npy", ".npz"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=600),
    suffix=_SUFFIX,
    head=st.sampled_from([b"", b"step,e0,e1\n", b'{"step": 0, "counts": [', b"\x93NUMPY\x01\x00"]),
)
def test_read_log_never_fails_otherwise_than_log_error(tmp_path, data, suffix, head):
    p = tmp_path / f"fuzz{suffix}"
    p.write_bytes(head + data)
    try:
        log = read_log(p)
    except LogError as e:
        assert "\n" not in str(e)
    else:
        for lay in log.layers.values():
            assert np.isfinite(lay.counts).all() and (lay.counts >= 0).all()
            assert (lay.counts < 1e15).all() and lay.n_experts >= 2


# --------------------------------------------------------------------------------------------
# the mean router logits ("scores")


def test_scores_round_trip_and_diagnose_passes_them_to_the_monitor(cli, tmp_path):
    from moebif.monitor import LayerMonitor

    c = _counts(4, 640, seed=3)
    rng = np.random.default_rng(1)
    imp = c / c.sum(1, keepdims=True) + rng.normal(0, 0.003, c.shape)
    imp = np.abs(imp) / np.abs(imp).sum(1, keepdims=True)
    sc = np.log(imp) + rng.normal(0, 0.01, c.shape)
    p = tmp_path / "log.jsonl"
    write_log(p, np.arange(640), {"x": c}, importance={"x": imp}, scores={"x": sc}, top_k=1)
    lay = read_log(p).layers["x"]
    assert lay.meta["scores"] is True
    np.testing.assert_array_equal(lay.scores, sc)  # repr: exact
    # LogWriter lines: 9 significant digits
    line = data_line(0, "x", [1, 2], scores=[0.123456789012, -3.0])
    assert json.loads(line)["scores"] == [0.123456789, -3.0]

    r = cli("diagnose", p, "--out", tmp_path / "o", "--window", 256, "--json")
    assert r.code == 0, r.err
    (got,) = r.json["layers"]
    assert got["scores_recorded"] is True and got["importance_recorded"] is True

    def direct(scores):
        m = LayerMonitor(4, top_k=1, window=256, name="x", history=None)
        m.update_many(lay.counts, lay.importance, scores)
        return json.loads(json.dumps(m.summary()["estimate"], default=float))

    assert got["estimate"] == direct(lay.scores)
    assert got["estimate"] != direct(None)  # the scores did change what the monitor measured

    # an older log without scores still reads and diagnoses
    q = tmp_path / "old.jsonl"
    write_log(q, np.arange(100), {"x": c[:100]}, importance={"x": imp[:100]}, top_k=1)
    assert read_log(q).layers["x"].scores is None
    r = cli("diagnose", q, "--out", tmp_path / "o2", "--window", 64, "--json")
    assert r.code == 0 and r.json["layers"][0]["scores_recorded"] is False


def test_bad_scores_are_one_line_errors(cli, tmp_path):
    h = {"moebif_log": 2, "layers": {"a": {**_spec(2, 1, True), "scores": True}}}
    good = '{"step": 0, "layer": "a", "counts": [1, 2], "importance": [0.5, 0.5]'
    for i, (tail, where) in enumerate(
        [
            (', "scores": [1, "x"]}', "scores[1]"),
            (', "scores": [1, 1e300]}', "scores[1]"),
            (', "scores": [1]}', "key scores"),
        ]
    ):
        p = tmp_path / f"b{i}.jsonl"
        p.write_text(json.dumps(h) + "\n" + good + tail + "\n")
        with pytest.raises(LogError, match=where.replace("[", r"\[")):
            read_log(p)
        r = cli("diagnose", p, "--out", tmp_path / "o")
        assert r.code == 2 and r.err.count("\n") == 1
    p = tmp_path / "mixed.jsonl"
    p.write_text(
        json.dumps(h)
        + "\n"
        + good
        + ', "scores": [0, 1]}\n'
        + good.replace('"step": 0', '"step": 1')
        + "}\n"
    )
    with pytest.raises(LogError, match="line 3, key scores: missing"):
        read_log(p)
