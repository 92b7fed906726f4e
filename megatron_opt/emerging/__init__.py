"""Emerging optimizers (Muon family, ...) and their registry; importing this registers muon and adaptive_muon."""

from megatron_opt.emerging.adaptive_muon import TensorParallelAdaptiveMuon
from megatron_opt.emerging.muon import TensorParallelMuon, muon_scale_factor
from megatron_opt.emerging.newton_schulz import fp32_matmul_precision, newton_schulz, newton_schulz_tp
from megatron_opt.emerging.registry import (
    EmergingOptimizerEntry,
    emerging_optimizer_names,
    get_emerging_optimizer_entry,
    get_supported_coefficient_types,
    is_muon_excluded,
    register_emerging_optimizer,
    validate_coefficient_type,
)

__all__ = [
    "EmergingOptimizerEntry",
    "TensorParallelAdaptiveMuon",
    "TensorParallelMuon",
    "emerging_optimizer_names",
    "fp32_matmul_precision",
    "get_emerging_optimizer_entry",
    "get_supported_coefficient_types",
    "is_muon_excluded",
    "muon_scale_factor",
    "newton_schulz",
    "newton_schulz_tp",
    "register_emerging_optimizer",
    "validate_coefficient_type",
]

from megatron_opt.emerging.entries_lion_soap import register_lion_and_soap  # noqa: E402
from megatron_opt.emerging.lion import Lion  # noqa: E402
from megatron_opt.emerging.soap import SOAP  # noqa: E402

register_lion_and_soap()
__all__ += ["Lion", "SOAP"]
