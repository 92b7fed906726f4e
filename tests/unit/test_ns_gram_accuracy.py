"""The Gram-space NS of tools/ns_gram_accuracy.py is the same polynomial as plain NS (so its measured errors
are rounding, not a different iteration): in float64 every variant matches plain NS to ~1e-12."""

from __future__ import annotations

import pytest
import torch

from megatron_opt.ns_coefficients import coefficients_for_steps
from tools.ns_gram_accuracy import gram_restart_ns, make_input, plain_ns


@pytest.mark.parametrize("coefficient_type", ["simple", "polar_express"])
@pytest.mark.parametrize("restart_after,identity_free", [(set(), False), ({3}, False), ({3}, True), ({2, 4}, True)])
def test_gram_restart_is_plain_ns_in_float64(coefficient_type, restart_after, identity_free):
    torch.manual_seed(0)
    triples = coefficients_for_steps(coefficient_type, 5, None)
    for kind in ("random", "illcond"):
        x = make_input(16, 48, kind)
        expected = plain_ns(x, triples)
        got = gram_restart_ns(x, triples, restart_after, identity_free)
        assert (got - expected).abs().max().item() < 1e-11


def test_make_input_illcond_has_the_stated_singular_values():
    torch.manual_seed(0)
    s = torch.linalg.svdvals(make_input(16, 48, "illcond"))
    assert (s.max() / s.min()).item() == pytest.approx(1e6, rel=1e-6)
