"""Advice from a training log in the stack's units (moebif.monitor.advice, ``moebif advise
--from-log``): the stacks' coefficients against the losses themselves (Hugging Face's own
``load_balancing_loss_func`` by autograd against Megatron's and OLMo-core's published formulas),
the critical coefficient of the paper's score model read back from a log, and the log header's
record of the optimiser written by a real training loop."""

import json

import numpy as np
import pytest

from moebif.monitor.advice import advise_from_log, stack_coefficients
from moebif.monitor.logs import LogWriter, data_line

from .test_forces import _score_router


def _balanced_logits(tokens, n, k):
    """Logits whose top-k choices load every expert equally and whose mean probabilities are
    uniform (token t prefers experts t, t+1, ..., t+k-1 mod n)."""
    z = np.zeros((tokens, n))
    for t in range(tokens):
        for j in range(k):
            z[t, (t + j) % n] = 3.0
    return z


@pytest.mark.parametrize(("n", "k", "layers"), [(8, 2, 2), (16, 4, 3), (6, 1, 4)])
def test_stack_coefficients_put_the_same_aux_gradient_on_a_layer(n, k, layers):
    """The gradient of Hugging Face's pooled loss on one layer's logits, at coefficient alpha,
    equals that of Megatron's per-layer loss at the Megatron coefficient the conversion gives
    (and OLMo-core's, whose per-layer loss is divided by the layers), with the other layers
    balanced."""
    torch = pytest.importorskip("torch")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    rng = np.random.default_rng(n + k)
    t = 4 * n
    z0 = torch.tensor(rng.normal(0.0, 1.0, (t, n)), requires_grad=True)
    others = [torch.tensor(_balanced_logits(t, n, k)) for _ in range(layers - 1)]
    alpha = 0.37
    hf = alpha * load_balancing_loss_func((z0, *others), n, k)
    (g_hf,) = torch.autograd.grad(hf, z0)

    def per_layer(coef, scale):
        # Megatron's switch_load_balancing_loss_func: sum(probs.sum(0) * tokens_per_expert) *
        # N * coef / (T^2 k); OLMo-core's is the same divided by the number of layers
        probs = torch.softmax(z0, -1)
        idx = torch.topk(probs, k, -1).indices
        counts = torch.nn.functional.one_hot(idx, n).sum((0, 1)).double()
        return coef * scale * (probs.sum(0) * counts).sum() * n / (t * t * k)

    conv = stack_coefficients(alpha, n, k, layers)
    assert conv["hf"] == pytest.approx(alpha)
    (g_meg,) = torch.autograd.grad(per_layer(conv["megatron"], 1.0), z0)
    (g_olmo,) = torch.autograd.grad(per_layer(conv["olmo"], 1.0 / layers), z0)
    # Hugging Face casts its token fractions to float32: agreement to float32 rounding (a wrong
    # conversion is off by a factor of k, L or N)
    tol = 3e-5 * float(g_hf.abs().max())
    np.testing.assert_allclose(g_meg.numpy(), g_hf.numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(g_olmo.numpy(), g_hf.numpy(), rtol=0, atol=tol)


def _score_log(tmp_path, c, *, n=8, lr=None):
    """The paper's score model with the HF aux loss (tests/monitor/test_forces.py), written to a
    log as the monitor writes it; ``lr``: the optimiser record of the header."""
    rows = []
    est, _ = _score_router(c, n=n, record=rows)
    path = tmp_path / "score.jsonl"
    run = {"optimizer": None if lr is None else {"kind": "SGD", "lr": lr}, "aux": None}
    spec = {"r": {"n_experts": n, "top_k": 1, "router_class": "", "importance": False,
                  "probabilities": None, "scores": False}}  # fmt: skip
    w = LogWriter(path, spec, run=run)
    for i, (f, counts) in enumerate(rows):
        w.write_step(i, [data_line(i, "r", np.rint(counts).tolist(), forces=f)])
    w.close()
    return path, est


def test_advice_reads_the_score_models_critical_coefficient(tmp_path):
    """In the score model the critical coefficient is c* = eta a N T / lr (the linear
    threshold; tests/monitor/test_forces.py checks it against the router's real behaviour).
    The advice read from the log gives it within 10%, recommends at least the interval's upper
    end, calls the stable router (1.5 c*) safe, and its bias rate is the reinforcement's drift
    at a full collapse, eta a (1 - 1/N) a step (the forces here are the steps themselves)."""
    n, eta, a = 8, 0.05, 1.0
    c_star = eta * a * n / 0.05
    path, est = _score_log(tmp_path, 1.5 * c_star, n=n, lr=1.0)
    res = advise_from_log(path)
    L = res.layers["r"]
    assert L.critical == pytest.approx(c_star, rel=0.1)
    assert L.critical_lo <= L.critical <= L.critical_hi <= L.recommended
    assert L.recommended <= 1.5 * c_star and L.safe is True
    assert L.bias_needed is True
    assert L.bias_rate_logits == pytest.approx(eta * a * (1 - 1 / n), rel=0.1)
    assert L.bias_rate_probability == pytest.approx(L.bias_rate_logits * (1 / n) * (1 - 1 / n))
    # the same number the monitor's summary gives on the same steps
    assert L.critical == pytest.approx(est.critical_coefficient, rel=0.02)
    d = res.to_dict()
    json.dumps(d)  # JSON-ready, non-finite values as null
    assert d["layers"]["r"]["stacks"]["megatron"]["critical"] == pytest.approx(c_star / 1, rel=0.1)


def test_advice_until_reads_a_prefix_and_the_lr_override(tmp_path):
    n = 8
    c_star = 0.05 * n / 0.05
    path, _ = _score_log(tmp_path, 1.5 * c_star, n=n)
    early = advise_from_log(path, until=250).layers["r"]
    assert early.critical is None and "segments" in early.reason  # 6 segments need 300 steps
    full = advise_from_log(path)
    assert full.lr is None and full.layers["r"].bias_rate_logits is None
    assert "--lr" in full.layers["r"].reason
    assert advise_from_log(path, lr=2.0).layers["r"].bias_rate_logits is not None
    with pytest.raises(ValueError, match="until"):
        advise_from_log(path, until=0)


def test_monitor_log_header_records_the_optimiser(tmp_path, cli):
    """A real training loop: the header carries the optimiser's kind and learning rate and the
    aux convention; the CLI reads them back (exit 0, JSON) and refuses a bad argument with
    exit 2 and one line."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from moebif.monitor import read_log
    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.tiny import corpus, text_batches, tiny_model

    torch.manual_seed(0)
    model = tiny_model("mixtral", 0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    log = tmp_path / "router.jsonl"
    mon = RouterMonitor(model, log=log, optimizer=opt, aux_coef=0.02)
    for x in text_batches(8, 4, 32, seed=0, corpus=corpus("licenses")):
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        mon.step()
    mon.close()
    run = read_log(log).header["run"]
    assert run["optimizer"]["kind"] == "AdamW"
    assert run["optimizer"]["lr"] == pytest.approx(3e-3)
    assert run["aux"] == {"coefficient": 0.02, "variant": "hf", "pooled_layers": 2}
    r = cli("advise", "--from-log", log, "--json")
    assert r.code == 0, r.err
    d = r.json
    assert d["lr"] == pytest.approx(3e-3) and len(d["layers"]) == 2
    assert all(v["critical"] is None for v in d["layers"].values())  # 8 steps: not resolved
    bad = cli("advise", "--from-log", log, "--until", 0)
    assert bad.code == 2 and "--until" in bad.err and len(bad.err.strip().splitlines()) == 1
    assert cli("advise", "--a", 1).code == 2
    assert cli("advise", "--from-log", tmp_path / "missing.jsonl").code == 2
