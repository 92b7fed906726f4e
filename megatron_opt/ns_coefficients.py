"""Newton–Schulz coefficient tables: pure data, the lowest layer.

Each entry is a list of ``(a, b, c)`` triples for the quintic step ``X <- aX + (bA + cA^2)X`` with
``A = X X^T``; ``c == 0`` makes the step cubic. ``iteration`` says what happens past the end of the
list: ``cycle`` starts again from the first triple, ``repeat_last`` keeps the last one.
The values follow the Emerging-Optimizers ``NSCoeffT`` vocabulary so configs transfer unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Tuple

from megatron_opt.errors import config_error

Triple = Tuple[float, float, float]


@dataclass(frozen=True)
class CoefficientSet:
    triples: Tuple[Triple, ...]
    iteration: Literal["cycle", "repeat_last"]
    required_steps: Optional[int] = None  # cubic5 is tuned for exactly five steps


_KJ = (3.4445, -4.7750, 2.0315)

COEFFICIENT_SETS = {
    "simple": CoefficientSet((_KJ,), "cycle"),
    "quintic": CoefficientSet(
        (
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ),
        "cycle",
    ),
    "polar_express": CoefficientSet(
        (
            (8.2051, -22.9019, 16.4607),
            (4.0664, -2.8612, 0.5184),
            (3.9096, -2.8234, 0.5250),
            (3.2856, -2.4153, 0.4853),
            (2.2779, -1.6198, 0.3985),
            (1.8726, -1.2307, 0.3585),
            (1.8564, -1.2132, 0.3568),
            (1.8750, -1.2500, 0.3750),
        ),
        "repeat_last",
    ),
    "cans": CoefficientSet(
        (
            (8.4703, -25.1081, 18.6293),
            (4.1828, -3.1087, 0.5806),
            (3.9619, -2.9541, 0.5630),
            (3.2866, -2.4647, 0.5074),
            (2.2737, -1.6447, 0.4162),
        ),
        "repeat_last",
    ),
    "aol": CoefficientSet(
        (
            (4.0098, -7.0585, 2.4635),
            (3.4585, -5.5479, 2.5959),
            (2.7573, -3.2939, 1.4254),
            (2.7215, -3.0494, 1.3169),
        ),
        "cycle",
    ),
    "deepseekv4": CoefficientSet((_KJ,) * 8 + ((2.0, -1.5, 0.5),) * 2, "repeat_last"),
    "cubic5": CoefficientSet(
        (
            (3.3656576, -3.3420992, 0.0),
            (2.5744352, -1.4957376, 0.0),
            (2.5368962, -1.4312570, 0.0),
            (2.4418906, -1.2764040, 0.0),
            (2.2230472, -0.9630650, 0.0),
        ),
        "cycle",
        required_steps=5,
    ),
}

CUSTOM = "custom"


def get_supported_coefficient_types() -> Tuple[str, ...]:
    """Every name ``coefficient_type`` accepts, ``custom`` included."""
    return tuple(COEFFICIENT_SETS) + (CUSTOM,)


def validate_coefficient_type(value: str, field: str = "muon_coefficient_type") -> None:
    """Raise ConfigError now (at config construction), not at the first Newton–Schulz step."""
    if value not in get_supported_coefficient_types():
        raise config_error(field, value, "one of " + ", ".join(get_supported_coefficient_types()))


def coefficients_for_steps(
    coefficient_type: str,
    num_steps: int,
    custom_coefficients: Optional[Sequence[Triple]] = None,
) -> Tuple[Triple, ...]:
    """The exact triple used at each of ``num_steps`` steps, with cycle / repeat-last applied."""
    validate_coefficient_type(coefficient_type)
    if num_steps < 1:
        raise config_error("num_ns_steps", num_steps, "an integer >= 1")
    if coefficient_type == CUSTOM:
        if not custom_coefficients:
            raise config_error(
                "muon_custom_coefficients", custom_coefficients, "a non-empty list of (a, b, c) triples when coefficient_type='custom'"
            )
        coeff_set = CoefficientSet(tuple(tuple(float(x) for x in t) for t in custom_coefficients), "cycle")
    else:
        coeff_set = COEFFICIENT_SETS[coefficient_type]
    if coeff_set.required_steps is not None and num_steps != coeff_set.required_steps:
        raise config_error("num_ns_steps", num_steps, f"exactly {coeff_set.required_steps} for coefficient_type={coefficient_type!r}")
    triples = coeff_set.triples
    if coeff_set.iteration == "cycle":
        return tuple(triples[i % len(triples)] for i in range(num_steps))
    return tuple(triples[min(i, len(triples) - 1)] for i in range(num_steps))
