"""The scheme registry: every registered scheme implements the whole interface of
:class:`moebif.model.schemes.Scheme`, and the parser, the theory, the simulator, the explorer and
the CLI help all read this one registry."""

from __future__ import annotations

import inspect
from dataclasses import fields

import numpy as np
import pytest

from moebif.model import balancers as bl
from moebif.model import schemes as sc
from moebif.model.balancer_theory import STRENGTH_SCHEMES, scheme_spec
from moebif.model.field import FieldState, VectorField
from moebif.params import ParameterError

CLASSES = sc.scheme_classes()
OPTIMIZER_FIELDS = {"optimizer", "lr", "adam_beta1", "adam_beta2", "adam_eps", "adam_floor"}
ABSTRACT = {
    name for name, f in vars(sc.Scheme).items() if getattr(f, "__isabstractmethod__", False)
}


def _spec(name: str) -> bl.BalancerSpec:
    """A spec switching on the scheme ``name`` alone, through the parser."""
    return bl.parse_balancers(f"{name}:0.5")


def test_the_interface_is_what_the_issue_asks_for():
    # parse and label; mean-field terms; shift of the effective parameters; kernel
    assert {"parse", "active", "label", "terms", "shift", "kernel"} <= ABSTRACT
    # kind, kernel mode and cost are part of every scheme too
    for attr in ("kind", "kernel_mode", "selection_slope", "served_slope", "dropped"):
        assert hasattr(sc.Scheme, attr) or attr in sc.Scheme.__annotations__


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_registered_scheme_implements_the_whole_interface(cls):
    assert issubclass(cls, sc.Scheme) and not inspect.isabstract(cls)
    for method in ABSTRACT:
        assert getattr(cls, method) is not getattr(sc.Scheme, method), method
    scheme = cls()
    assert cls.name in cls.names and all(isinstance(h, str) and h for h in cls.names.values())
    assert set(cls.aliases.values()) <= set(cls.names)
    assert cls.kind in sc.KINDS
    spec_fields = {f.name for f in fields(bl.BalancerSpec)}
    assert cls.fields and set(cls.fields) <= spec_fields
    if cls.kernel_mode is not None:
        mode, code = cls.kernel_mode
        assert isinstance(mode, str) and isinstance(code, int) and code > 0
    assert set(cls.strength_names) <= set(cls.names)
    assert not (cls.by_construction and cls.strength_names)

    from moebif.sim._kernels import balancers as kb

    for name in cls.names:
        spec = _spec(name)
        # parse and label: the item switches the scheme on, and the label parses back
        assert scheme.active(spec) and [type(s) for s in spec.schemes] == [cls]
        assert bl.parse_balancers(spec.label()) == spec
        assert scheme.label(spec) and not scheme.label(bl.BalancerSpec())
        assert not scheme.active(bl.BalancerSpec())
        # its mean-field terms: drift and Jacobian on the field's state
        terms = scheme.terms(spec, rate=1.0, batch=None)
        assert isinstance(terms, tuple)
        if terms:
            f = VectorField(2.0, 1.0, 0.8, np.zeros(4), 1, terms)
            st = FieldState(f, np.array([0.3, -0.1, 0.0, 0.2]), a=2.0)
            for t in terms:
                assert t.drift(st).shape == (4,) and t.jacobian(st).shape == (4, 4)
        # its shift of the effective parameters
        ctx = sc.ShiftContext(4, 1, 2.0, 1.0, 0.8, 1.0, 512, 1e-2, 0.25, 2.0 * 0.25 / 0.8)
        sh = scheme.shift(spec, ctx)
        assert isinstance(sh, sc.Shift) and np.isfinite(sh.contrast) and np.isfinite(sh.common)
        # kernel slots exist in the kernel's layout
        for slot, value in scheme.kernel(spec, 4, 1).items():
            assert hasattr(kb, f"BAL_{slot}") and np.isfinite(value)
        # cost
        assert np.isfinite(scheme.selection_slope(spec, 4, 1, 0.25))
        assert 0.0 <= scheme.served_slope(spec, 4, 1, 512) <= 1.0
        d = scheme.dropped(spec, 4, 1, 512)
        assert d is None or 0.0 <= d <= 1.0


def test_every_spec_field_belongs_to_one_scheme_or_the_optimizer():
    owned = [f for cls in CLASSES for f in cls.fields]
    assert len(owned) == len(set(owned))
    assert set(owned) | OPTIMIZER_FIELDS == {f.name for f in fields(bl.BalancerSpec)}
    assert not set(owned) & OPTIMIZER_FIELDS


def test_one_registry_for_parser_theory_simulator_explorer_and_cli():
    import moebif.cli.simulate  # noqa: F401  (registers the command)
    from moebif.explore.balancers import BALANCERS
    from moebif.sim import balanced_router as br

    assert bl.SCHEMES is sc.SCHEMES and moebif.SCHEMES is sc.SCHEMES
    # the parser knows exactly the registry's names (and the optimizer's items)
    for name in sc.SCHEMES:
        assert _spec(name).schemes
    with pytest.raises(ParameterError, match="known: " + ", ".join(sc.SCHEMES)):
        bl.parse_balancers("nonsense:1")
    # the theory's strength schemes are registry names, and their spec is the parser's
    for name, cls in STRENGTH_SCHEMES.items():
        assert sc.SCHEMES[name] is cls and scheme_spec(name, 0.5) == _spec(name)
    # the simulator's kernel modes
    modes = {c.kernel_mode for c in CLASSES if c.kernel_mode is not None}
    assert set(br._MODES.items()) == modes | {("softmax", 0)}
    assert len(set(br._MODES.values())) == len(br._MODES)
    # the explorer's views of the stacks' schemes
    views = {s.explorer().name for s in sc.scheme_instances() if s.explorer() is not None}
    assert views and views <= set(BALANCERS)
    # the CLI help lists every registered name
    import typer.main

    from moebif.cli._common import app

    click_app = typer.main.get_command(app)
    opt = next(p for p in click_app.commands["simulate"].params if p.name == "balancer")
    assert all(name in opt.help for name in sc.SCHEMES)


def test_balancer_vector_is_the_schemes_slots():
    from moebif.sim import balanced_router as br
    from moebif.sim._kernels import balancers as kb

    spec = bl.parse_balancers("aux-deepspeed:0.3,zloss:1e-3,capacity:1.2,noisy:0.1,jitter:0.02")
    v = br.balancer_vector(spec, 6, 2, 1e-2)
    c, first = bl.aux_normalisation("deepspeed", 6, 2)
    assert v[kb.BAL_MODE] == 5 and v[kb.BAL_AUX] == 0.3 * c and v[kb.BAL_AUX_FIRST] == first
    assert (v[kb.BAL_Z], v[kb.BAL_CAP], v[kb.BAL_SIGMA], v[kb.BAL_JITTER]) == (
        1e-3,
        1.2,
        0.1,
        0.02,
    )
    assert v[kb.BAL_GRAD] == 1.0 and v[kb.BAL_LR] == 1e-2
    assert (
        br.balancer_vector(bl.parse_balancers("bias:1e-3,noisy:0.1"), 6, 2, 1e-2)[kb.BAL_MODE] == 1
    )
