"""Section 1 of tools/device_check.py: the on-device skip-step path queues its update without a host sync.

For each optimizer the real ``get_megatron_optimizer`` builds it over a small GPT (``training.model``) whose
fp32 gradients sit in ``main_grad``, as our DDP delivers them. After enough accepted steps for the detector
to decide (its ``min_history``), three steps — normal, loss spike, normal — run split where
docs/skip_step.md splits ``step()``: ``prepare_grads`` and ``_step_with_device_decision`` (norm, window test,
clipping, the update handed ``found_inf``) under ``torch.cuda.set_sync_debug_mode("error")``, then, outside
it, ``_finish_device_step`` (the documented once-per-step read of the return values). Whole ``step()`` calls
run under mode "warn" with every sync recorded and located, for the record (not pass/fail): the first step
(lazy state, SOAP's eigh), the later warm-up steps, one normal step and, for SOAP, one basis-refresh step.

A negative control (Adam with the foreach backend, which takes no ``found_inf`` and so reads the decision
once inside the guarded part) must be caught: otherwise a clean result would prove nothing.

Without CUDA the same steps run on CPU with ``skip_on_device=True`` forced (as the unit tests do), the
guarded part under a stand-in that makes Python-level tensor → host reads raise; the spike skip, the
applied update and the control are still checked, CUDA syncs are not.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from megatron_opt.config import OptimizerConfig
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.parallel import ProcessGroupCollection
from megatron_opt.standard import available_backends
from training.model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
SIGMA, WINDOW = 3.0, 16
SPIKE_LOSS = 3000.0
SOAP_FREQUENCY = 16
"""SOAP refreshes its basis every 16th accepted step: none inside the checked steps (13-14), one measured
separately (step 16), so a QR sync is told apart from the path that must be sync-free."""
SYNC_MESSAGE = "synchronizing CUDA operation"
HOST_READ_MESSAGE = "host read inside the guarded part (the CPU stand-in for a synchronizing CUDA operation)"


@dataclass(frozen=True)
class Case:
    config: Dict[str, Any]
    """OptimizerConfig fields besides skip_step_sigma / skip_step_window."""
    expect_sync: bool = False
    """A negative control: the guarded part must be caught reading back, else the guard proves nothing."""


CASES: Dict[str, Case] = {
    "adam": Case(dict(optimizer="adam", lr=1e-3)),
    "adam_bf16": Case(dict(optimizer="adam", lr=1e-3, bf16=True)),
    "muon": Case(dict(optimizer="muon", lr=1e-2)),
    "adaptive_muon": Case(dict(optimizer="adaptive_muon", lr=1e-2)),
    "lion": Case(dict(optimizer="lion", lr=1e-4)),
    "soap": Case(dict(optimizer="soap", lr=1e-3, soap_precondition_frequency=SOAP_FREQUENCY)),
    # foreach Adam takes no found_inf, so the decision is read once, bool(skip), inside the guarded part
    "control_adam_foreach": Case(dict(optimizer="adam", lr=1e-3, standard_backend="torch_foreach"), expect_sync=True),
}
MODEL_SIZES = {  # GPTConfig fields: tiny for --smoke on CPU, small (~1.6M params, 1024-wide SOAP factors) on CUDA
    "smoke": dict(hidden_size=32, num_layers=2, num_attention_heads=2, seq_length=16, vocab_size=64),
    "full": dict(hidden_size=256, num_layers=2, num_attention_heads=4, seq_length=64, vocab_size=1024),
}
BACKEND_LOG = re.compile(r"megatron_opt: (\w+) uses the (\w+) backend")


# ---- where a sync came from ----------------------------------------------------------------------------


def _short(filename: str) -> str:
    path = Path(filename).resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else Path(*path.parts[-3:]))


def _where(frames: List[traceback.FrameSummary], at: Optional[str] = None) -> Dict[str, Optional[str]]:
    """Where the sync was raised (``at``: torch's own report, else the innermost frame), and the innermost
    frame in megatron_opt/ (the library line that asked for it)."""
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(REPO / "megatron_opt")]
    if at is None and frames:
        at = f"{_short(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name}"
    return {"at": at, "library": f"{_short(ours[-1].filename)}:{ours[-1].lineno} in {ours[-1].name}" if ours else None}


class SyncRecorder:
    """Sync debug mode "warn" for the block, every "called a synchronizing CUDA operation" warning recorded
    with the stack it was raised from (the mode only exists on CUDA: elsewhere the recorder is inert)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.sites: List[Dict[str, Optional[str]]] = []
        self._stack = contextlib.ExitStack()

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_MESSAGE in str(message):
            self.sites.append(_where(traceback.extract_stack(), at=f"{_short(filename)}:{lineno}"))
        else:
            self._previous_show(message, category, filename, lineno, file, line)

    def __enter__(self) -> "SyncRecorder":
        self._stack.enter_context(warnings.catch_warnings())  # restores filters and showwarning on exit
        warnings.simplefilter("always")
        self._previous_show = warnings.showwarning
        warnings.showwarning = self._show
        if self.enabled:
            self._stack.enter_context(sync_debug_mode("warn"))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def summary(self, steps: int = 1) -> Dict[str, Any]:
        counts: Dict[str, int] = {}
        for s in self.sites:
            key = f"{s['library']} (raised at {s['at']})" if s["library"] else str(s["at"])
            counts[key] = counts.get(key, 0) + 1
        return {"recorded": self.enabled, "syncs": len(self.sites), "steps": steps, "by_library_line": counts}


@contextlib.contextmanager
def sync_debug_mode(mode: str) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode(mode)`` for the block; the previous mode ("default") after."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@contextlib.contextmanager
def host_read_guard() -> Iterator[None]:
    """Without CUDA: every tensor → host read (``item``, ``bool``, ``float``, ``int``, ``tolist``) raises, as
    tests/unit/host_reads.py does. It sees Python-level reads only, not syncs inside torch's own kernels."""
    names = ("item", "__bool__", "__float__", "__int__", "tolist")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def refuse(*args, **kwargs):
        raise RuntimeError(HOST_READ_MESSAGE)

    for n in names:
        setattr(torch.Tensor, n, refuse)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def guard(cuda: bool):
    return sync_debug_mode("error") if cuda else host_read_guard()


GUARDS = {True: "torch.cuda.set_sync_debug_mode('error')",
          False: "CPU stand-in: Python-level tensor->host reads raise (not torch-internal syncs)"}


def is_sync_error(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and (SYNC_MESSAGE in str(e) or HOST_READ_MESSAGE in str(e))


# ---- the model, its gradients and the optimizer -----------------------------------------------------------


class GradFeed:
    """A fixed random direction per parameter, scaled per step into ``main_grad`` on device (no host read)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, seed: int = 1) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.params = list(model.parameters())
        self.direction = [(torch.randn(p.shape, generator=gen) * 1e-2).to(device) for p in self.params]
        for p in self.params:
            p.main_grad = torch.empty(p.shape, dtype=torch.float32, device=device)

    def feed(self, scale: float) -> None:
        for p, d in zip(self.params, self.direction):
            torch.mul(d, scale, out=p.main_grad)


class _LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def build(case: Case, device: torch.device, size: str):
    """(model, optimizer, feed, log lines of the build): the library's own factory, nothing hand-assembled."""
    overrides = dict(case.config)
    dtype = torch.bfloat16 if overrides.get("bf16") else torch.float32
    model = GPT(GPTConfig(**MODEL_SIZES[size], params_dtype=dtype), ProcessGroupCollection.single_process()).to(device)
    feed = GradFeed(model, device)
    logger, handler = logging.getLogger("megatron_opt"), _LogLines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        opt = get_megatron_optimizer(OptimizerConfig(skip_step_sigma=SIGMA, skip_step_window=WINDOW, **overrides), [model])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return model, opt, feed, handler.lines


# ---- the steps -------------------------------------------------------------------------------------------


class Stepper:
    """Drives one optimizer: host-side losses and gradient scales, and counts the accepted steps."""

    def __init__(self, model: torch.nn.Module, opt, feed: GradFeed, seed: int = 0) -> None:
        self.model, self.opt, self.feed = model, opt, feed
        self.rng = random.Random(seed)
        self.accepted = 0

    def _prepare(self, loss: Optional[float], scale: Optional[float]) -> None:
        self.opt.zero_grad()
        self.feed.feed(1.0 + 0.05 * self.rng.gauss(0, 1) if scale is None else scale)
        self.opt.observe_loss(3.0 + 0.02 * self.rng.gauss(0, 1) if loss is None else loss)

    def full_step(self, loss: Optional[float] = None, scale: Optional[float] = None) -> bool:
        """One whole ``opt.step()`` (noisy loss and scale unless given); True if applied."""
        self._prepare(loss, scale)
        updated, _, _ = self.opt.step()
        self.accepted += bool(updated)
        return bool(updated)

    def split_step(self, loss: float, guarded: Optional[bool]) -> Dict[str, Any]:
        """``step()`` in its two parts: the device part (``guard(guarded)`` around it unless None), then the
        documented read. Returns the outcome; a sync inside the device part raises out of here."""
        self._prepare(loss, 1.0)
        before = [p.detach().clone() for p in self.model.parameters()]
        state_before = optimizer_state(self.opt)
        with torch.no_grad():
            with contextlib.nullcontext() if guarded is None else guard(guarded):
                found_inf = self.opt.prepare_grads()  # False without a loss scaler; a Python bool, no read
                parts = None if found_inf else self.opt._step_with_device_decision()
            updated, norm, _ = (False, None, None) if parts is None else self.opt._finish_device_step(*parts)
        self.accepted += bool(updated)
        unchanged = all(torch.equal(a, b) for a, b in zip(before, self.model.parameters()))
        state_after = optimizer_state(self.opt)
        state_unchanged = len(state_before) == len(state_after) and all(
            torch.equal(a, b) for a, b in zip(state_before, state_after))
        return {"loss": loss, "updated": bool(updated), "grad_norm": norm, "params_unchanged": unchanged,
                "state_unchanged": state_unchanged}


def optimizer_state(opt) -> List[torch.Tensor]:
    """Every state tensor of every inner optimizer (moments, step counters, SOAP's factors and bases), cloned."""
    return [v.detach().clone() for o in opt._inner_optimizers() for p in o.state for v in o.state[p].values()
            if torch.is_tensor(v)]


PLAN: Tuple[Tuple[str, float], ...] = (("normal", 3.0), ("spike", SPIKE_LOSS), ("normal", 3.0))


def run_plan(stepper: Stepper, guarded: Optional[bool]) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """The checked steps; stops at the first sync (its location returned) unless ``guarded`` is None."""
    outcomes = []
    for kind, loss in PLAN:
        try:
            outcome = stepper.split_step(loss, guarded)
        except RuntimeError as e:
            if not is_sync_error(e):
                raise
            return outcomes, {"step": kind, "message": str(e).splitlines()[0],
                              **_where(traceback.extract_tb(e.__traceback__))}
        outcomes.append({"kind": kind, **outcome})
    return outcomes, None


def _warm_up(stepper: Stepper, cuda: bool) -> Dict[str, Any]:
    warmup = stepper.opt.skip_detector.min_history + 2
    with SyncRecorder(cuda) as first:
        applied = [stepper.full_step()]
    with SyncRecorder(cuda) as rest:
        applied += [stepper.full_step() for _ in range(warmup - 1)]
    return {"steps": warmup, "all_applied": all(applied), "syncs_step_1": first.summary(),
            "syncs_later_steps": rest.summary(warmup - 1)}


def check_case(name: str, device: torch.device, size: str, case: Optional[Case] = None) -> Dict[str, Any]:
    """Build, warm up, run the checked steps, then the recorded whole steps; one result dict."""
    cuda = device.type == "cuda"
    case = case or CASES[name]
    t0 = time.perf_counter()
    model, opt, feed, log = build(case, device, size)
    inner = opt._inner_optimizers()
    res: Dict[str, Any] = {
        "name": name,
        "config": dict(case.config),
        "expect_sync": case.expect_sync,
        "backends": dict(BACKEND_LOG.findall("\n".join(log))),
        "available_adam_backends": available_backends("adam", device),
        "inner_optimizers": [type(o).__module__.split(".")[0] + "." + type(o).__name__
                             + (" (fused)" if getattr(o, "defaults", {}).get("fused") else "") for o in inner],
        "found_inf_everywhere": all(getattr(o, "_step_supports_amp_scaling", False) for o in inner),
        "device_path_by_default": opt._skip_decided_on_device(),
    }
    if not cuda:
        opt.skip_on_device = True  # what the CPU unit tests force; on CUDA it is the default
    stepper = Stepper(model, opt, feed)
    res["warmup"] = _warm_up(stepper, cuda)
    outcomes, sync = run_plan(stepper, guarded=cuda)
    res["guard"] = GUARDS[cuda]
    res["sync_free" if cuda else "host_read_free"] = sync is None
    res["sync"] = sync
    if sync is not None:  # the decisions are still worth knowing: a fresh build, the same steps, no guard
        model, opt, feed, _ = build(case, device, size)
        if not cuda:
            opt.skip_on_device = True
        stepper = Stepper(model, opt, feed)
        _warm_up(stepper, False)
        outcomes, _ = run_plan(stepper, guarded=None)
        res["outcomes_note"] = "after the sync: rerun on a fresh build without the guard"
    res["outcomes"] = outcomes
    res["num_skipped"] = opt.skip_detector.num_skipped
    with SyncRecorder(cuda) as whole:
        stepper.full_step(loss=3.0, scale=1.0)
    res["syncs_whole_normal_step"] = whole.summary()
    if case.config.get("optimizer") == "soap":
        while (stepper.accepted + 1) % SOAP_FREQUENCY:
            stepper.full_step(loss=3.0, scale=1.0)
        with SyncRecorder(cuda) as refresh:
            stepper.full_step(loss=3.0, scale=1.0)
        res["syncs_soap_refresh_step"] = {**refresh.summary(), "accepted_step": stepper.accepted}
    res.update(_verdict(res, cuda))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def _verdict(res: Dict[str, Any], cuda: bool) -> Dict[str, Any]:
    by_kind: Dict[str, List[Dict[str, Any]]] = {}
    for o in res["outcomes"]:
        by_kind.setdefault(o["kind"], []).append(o)
    spike = by_kind.get("spike", [])
    normal = by_kind.get("normal", [])
    backends, wanted = res["backends"], res["config"].get("standard_backend", "torch_fused")
    checks = {  # every standard optimizer built took the backend wanted; the adam cases must have built one
        "backend_" + wanted: all(b == wanted for b in backends.values())
        and (backends.get("adam") == wanted or res["config"]["optimizer"] != "adam"),
        "device_path_by_default_on_cuda_only": res["device_path_by_default"] == cuda,
        "warmup_applied": res["warmup"]["all_applied"],
        "spike_skipped_params_and_state_unchanged": len(spike) == 1 and not spike[0]["updated"]
        and spike[0]["params_unchanged"] and spike[0]["state_unchanged"],
        "normal_applied_params_and_state_changed": len(normal) == 2
        and all(o["updated"] and not o["params_unchanged"] and not o["state_unchanged"] for o in normal),
        "num_skipped_is_1": res["num_skipped"] == 1,
    }
    clean = res["sync_free" if cuda else "host_read_free"]
    if res.get("expect_sync"):  # the control: caught at the documented read of the decision
        where = (res.get("sync") or {}).get("library") or ""
        checks["guard_caught_the_read"] = not clean and "device_skip_step.py" in where
    else:
        checks["sync_free" if cuda else "host_read_free"] = bool(clean)
    return {"checks": checks, "pass": all(checks.values())}


COVERED = ("prepare_grads() and _step_with_device_decision() (global grad norm, non-finite/threshold/rolling-window "
           "test, clipping, the inner update with found_inf) under the guard; _finish_device_step() (bool(updated), "
           "float(grad_norm), SOAP's note_step_outcome) outside it")


def run(device: torch.device, smoke: bool, log) -> Dict[str, Any]:
    """Section 1: every case, each in its own try so one failure leaves the others running."""
    cuda = device.type == "cuda"
    size = "full" if cuda and not smoke else "smoke"  # on CPU the full model only costs minutes (bf16 NS), not coverage
    checks = []
    for name in CASES:
        try:
            res = check_case(name, device, size)
        except Exception:  # noqa: BLE001 - recorded, the next case runs
            res = {"name": name, "pass": False, "error": traceback.format_exc()}
        checks.append(res)
        log(_line(res))
    out: Dict[str, Any] = {"guard": GUARDS[cuda], "covered_by_the_guard": COVERED, "checks": checks,
                           "model": MODEL_SIZES[size], "sigma": SIGMA, "window": WINDOW}
    if not cuda:
        out.update(status="skipped", reason="no CUDA: CUDA syncs not checked; the same steps ran on CPU with skip_on_device=True "
                   "forced, guarded against Python-level host reads, and their checks count")
    return out


def _line(res: Dict[str, Any]) -> str:
    if "error" in res:
        return f"  {res['name']:20s} ERROR {res['error'].strip().splitlines()[-1]}"
    what = "sync" if "sync_free" in res else "host read"
    clean = res.get("sync_free", res.get("host_read_free"))
    sync = f"no {what}" if clean else f"{what.upper()} at {res['sync']['library'] or res['sync']['at']}"
    if res.get("expect_sync"):
        sync = "(control, expected) " + sync
    failed = [k for k, v in res["checks"].items() if not v]
    whole = res["syncs_whole_normal_step"]
    extra = f"; whole step(): {whole['syncs']} sync(s)" if whole["recorded"] else ""
    if "syncs_soap_refresh_step" in res and res["syncs_soap_refresh_step"]["recorded"]:
        extra += f"; refresh step: {res['syncs_soap_refresh_step']['syncs']}"
    return (f"  {res['name']:20s} {'PASS' if res['pass'] else 'FAIL ' + ','.join(failed)}  {sync}; backends {res['backends']}; "
            f"spike skipped {not res['outcomes'][1]['updated'] if len(res['outcomes']) > 1 else '?'}{extra}")
