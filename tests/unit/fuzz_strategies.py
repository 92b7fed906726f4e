"""Hypothesis strategies for hostile input: OptimizerConfig fields, override dicts, command lines.

A plain module (not conftest) so tools/fuzz_error_messages.py and the tests share it. Every
strategy mixes values of the right type (edge values included: 0, negatives, nan, inf, huge) with
values of the wrong type, so a property can demand "works, or one ConfigError line".
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from typing import Any, Dict, List, Union

import torch
from hypothesis import strategies as st

from megatron_opt import config as config_module
from megatron_opt.config import OVERRIDE_KEYS, OptimizerConfig, ParamKey
from megatron_opt.optimizer_names import known_optimizer_names

MESSAGE_LOG = os.environ.get("MEGATRON_OPT_FUZZ_LOG")
"""When set, every ConfigError / CLI error line the properties see is appended to this file."""


def record(message: str) -> None:
    if MESSAGE_LOG:
        with open(MESSAGE_LOG, "a", encoding="utf-8") as handle:
            handle.write(" ".join(str(message).split()) + "\n")


# ---- values --------------------------------------------------------------------------------

FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-3, 0.5, 0.9, 0.999, 1.0, 2.0, -1.0, 1e30, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0.0, 1.0),
)
INTS = st.one_of(st.sampled_from([0, 1, 2, 5, -1, 99, 100, 2**40]), st.integers(-10, 300))
SHORT_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)
WRONG_TYPE = st.one_of(
    st.none(), st.booleans(), INTS, FLOATS, SHORT_TEXT, st.binary(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.integers(0, 3), st.integers(0, 3), max_size=2),
    st.just(object()), st.just(torch.float32), st.just(torch.int8), st.just((1.0, 2.0, 3.0)),
)

CHOICES: Dict[str, List[str]] = {
    "optimizer": sorted(known_optimizer_names()) + ["torch.optim.RAdam", "torch.optim.NoSuchOptimizer", "collections.OrderedDict",
                                                     "no_such_module.Cls", "dist_adam", "adamw"],
    "standard_backend": list(config_module.STANDARD_BACKENDS),
    "muon_scale_mode": list(config_module.SCALE_MODES),
    "muon_fp32_matmul_prec": list(config_module.FP32_MATMUL_PRECISIONS),
    "muon_tp_mode": list(config_module.TP_MODES),
    "adaptive_muon_moment2_method": list(config_module.MOMENT2_METHODS),
    "muon_coefficient_type": ["quintic", "polar_express", "cubic5", "custom", "simple", "aol"],
    "muon_scalar_optimizer": ["adam", "sgd", "lion", "muon"],
}


def field_types() -> Dict[str, Any]:
    hints = typing.get_type_hints(OptimizerConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(OptimizerConfig)}


def _base(tp: Any) -> Any:
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def right_type_values(name: str, tp: Any) -> st.SearchStrategy:
    base = _base(tp)
    if base is bool:
        return st.booleans()
    if base is int:
        return INTS
    if base is float:
        return st.one_of(FLOATS, INTS, st.sampled_from(["1e-3", "0.5", "nan", "fast"]))
    if base is str:
        return st.one_of(st.sampled_from(CHOICES.get(name, ["x"])), st.text(alphabet="abcdefgmnopstu_.", max_size=6))
    if base is torch.dtype:
        return st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.float64, "fp32", "bf16", "fp8", "int4"])
    if typing.get_origin(base) in (dict, Dict):
        return st.dictionaries(st.sampled_from(["lr", "betas", "eps", "foo", "weight_decay"]), st.one_of(FLOATS, SHORT_TEXT), max_size=3)
    if typing.get_origin(base) in (tuple, typing.Tuple):
        return st.one_of(st.lists(st.tuples(FLOATS, FLOATS, FLOATS), min_size=1, max_size=3),
                         st.lists(st.lists(st.one_of(FLOATS, st.just("a")), min_size=2, max_size=4), max_size=3))
    return WRONG_TYPE


BASES = [{}, {"lr": 1e-3}, {"lr": 1e-3, "optimizer": "muon"}, {"lr": 1e-3, "optimizer": "muon", "muon_coefficient_type": "custom"},
         {"lr": 1e-3, "optimizer": "adaptive_muon"}, {"lr": 1e-3, "optimizer": "soap"}, {"lr": 1e-3, "optimizer": "lion"},
         {"lr": 1e-3, "optimizer": "sgd"}, {"lr": 1e-3, "fp16": True}, {"lr": 1e-3, "bf16": True},
         {"lr": 1e-3, "use_distributed_optimizer": True}, {"lr": 1e-3, "optimizer": "torch.optim.RAdam", "optimizer_kwargs": {"eps": -1.0}},
         {"lr": 1e-3, "optimizer": "torch.optim.NoSuchOptimizer"}, {"lr": 1e-3, "optimizer": "no_such_module.Cls"}]
"""Starting points that reach each optimizer's own checks; the random fields are laid over them."""


def config_kwargs() -> st.SearchStrategy:
    """0-4 fields set to right- or wrong-typed values over one of BASES (0: the base alone)."""
    types = field_types()
    names = sorted(types)
    one = st.sampled_from(names).flatmap(lambda n: st.tuples(st.just(n), st.one_of(right_type_values(n, types[n]), WRONG_TYPE)))
    custom = st.fixed_dictionaries({"lr": st.just(1e-3), "optimizer": st.just("muon"), "muon_coefficient_type": st.just("custom"),
                                    "muon_custom_coefficients": right_type_values("muon_custom_coefficients", types["muon_custom_coefficients"])})
    base = st.one_of(st.sampled_from(BASES), custom)
    return st.tuples(base, st.lists(one, min_size=0, max_size=4)).map(lambda pair: {**pair[0], **dict(pair[1])})


EDGE_NUMBERS = [math.inf, -math.inf, math.nan, 1e3]
EDGE_BASES = [{"lr": 1e-3}, {"lr": 1e-3, "optimizer": "muon"}, {"lr": 1e-3, "fp16": True}, {"lr": 1e-3, "optimizer": "lion"}]


def numeric_edge_kwargs() -> st.SearchStrategy:
    """One numeric field at inf/-inf/nan/1e3 over a small base: (field, value, base) covered densely.

    Range checks already refuse negatives and zeros; non-finite values slip through ``x >= 0``-style
    checks, so they get their own dense property.
    """
    types = field_types()
    numeric = sorted(n for n, tp in types.items() if _base(tp) in (int, float))
    return st.tuples(st.sampled_from(EDGE_BASES), st.sampled_from(numeric), st.sampled_from(EDGE_NUMBERS)).map(
        lambda t: {**t[0], t[1]: t[2]})


def moderate(kwargs: Dict[str, Any]) -> bool:
    """No finite number in the config is beyond ±1e3: an accepted config of that kind must keep params finite.

    inf and nan count as moderate on purpose: where they are accepted they must be harmless (e.g.
    ``grad_norm_skip_threshold=inf``), anywhere else the config must refuse them.
    """
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or v is None:
            return True
        if isinstance(v, (int, float)):
            return not math.isfinite(v) or abs(v) <= 1e3
        if isinstance(v, str):
            try:
                return ok(float(v))
            except ValueError:
                return True
        if isinstance(v, (list, tuple)):
            return all(ok(x) for x in v)
        if isinstance(v, dict):
            return all(ok(x) for x in v.values())
        return True
    return all(ok(v) for v in kwargs.values())


# ---- override dicts ------------------------------------------------------------------------

PARAM_KEYS = st.one_of(
    st.builds(ParamKey, name=st.sampled_from(["*", "*.bias", "blocks.*", "embedding.weight", "nomatch*", "[", "*fc1*"])),
    st.builds(ParamKey, attr=st.sampled_from(["is_embedding_or_output", "no_such_attr"])),
    st.just(ParamKey()),
    st.deferred(lambda: HASHABLE_WRONG_TYPE),
)


OVERRIDE_VALUES = st.one_of(FLOATS, INTS, st.sampled_from(sorted(known_optimizer_names()) + ["nope", "torch.optim.SGD"]), WRONG_TYPE)
OVERRIDE_DICTS = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(OVERRIDE_KEYS), SHORT_TEXT), OVERRIDE_VALUES, max_size=3),
    WRONG_TYPE,
)
HASHABLE_WRONG_TYPE = st.one_of(st.none(), st.booleans(), INTS, FLOATS, SHORT_TEXT, st.binary(max_size=4), st.just(object()),
                                st.just(torch.int8), st.just((1.0, 2.0, 3.0)))
OVERRIDES = st.dictionaries(PARAM_KEYS, OVERRIDE_DICTS, max_size=3)


# ---- command lines -------------------------------------------------------------------------

BASE_ARGS = ["--lr", "1e-3", "--train-iters", "10"]


def _value_for(action: argparse.Action) -> st.SearchStrategy:
    good: List[str] = [str(c) for c in action.choices] if action.choices else []
    if action.default is not None and not isinstance(action.default, bool):
        good.append(str(action.default))
    junk = st.one_of(st.sampled_from(["0", "-1", "1", "2", "1e-3", "nan", "inf", "1e400", "", "x", "--", "-5", "[1, 2]",
                                      "{a: 1}", "true", "3.5", "99999999999999999999"]), SHORT_TEXT)
    return st.one_of(st.sampled_from(good), junk) if good else junk


def argv_strategy(parser: argparse.ArgumentParser) -> st.SearchStrategy:
    """Random command lines from the parser's own flags (help/version left out), junk values and stray tokens."""
    actions = [a for a in parser._actions if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]

    def pieces(action: argparse.Action) -> st.SearchStrategy:
        flag = st.sampled_from(action.option_strings)
        if action.nargs == 0:
            return flag.map(lambda f: [f])
        if action.nargs in ("+", "*") or isinstance(action.nargs, int):
            return st.tuples(flag, st.lists(_value_for(action), min_size=0, max_size=3)).map(lambda t: [t[0], *t[1]])
        return st.tuples(flag, _value_for(action)).map(list)

    one = st.one_of(
        st.sampled_from(actions).flatmap(pieces),
        st.sampled_from(actions).map(lambda a: [a.option_strings[0]]),  # a flag without its value
        SHORT_TEXT.map(lambda t: [t]),  # a stray token
        st.sampled_from(["--muon-momentun", "--lr=", "--world-size", "--yaml-cfg", "-"]).map(lambda t: [t]),
    )
    return st.tuples(st.booleans(), st.lists(one, max_size=5)).map(
        lambda t: (BASE_ARGS if t[0] else []) + [tok for piece in t[1] for tok in piece])
