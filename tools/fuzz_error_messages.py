"""List the distinct error messages the hostile-input suite (tests/unit/test_fuzz_inputs.py) produces.

    python tools/fuzz_error_messages.py            # runs the suite, prints a markdown list
    python tools/fuzz_error_messages.py --log F    # only summarize an existing log

The suite appends every ConfigError / CLI ``error:`` line it sees to ``$MEGATRON_OPT_FUZZ_LOG``.
Here the values given (random by construction) are replaced with ``<value>`` so that each message
*shape* appears once, with how often the suite hit it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERRIDE_KEYS = None  # filled lazily (imports torch)

_FIELD = r"(?:--?[\w-]+|[A-Za-z_][\w.]*|config_overrides\[ParamKey\(.*?\)\](?:\.[^=]*)?)"
_ASSIGNED = re.compile(rf"^(?P<field>{_FIELD})=(?P<value>.*?) is not allowed(?P<rest>.*)$")
_ARGUMENT = re.compile(r"^(?P<arg>argument [^:]+): (?P<value>.*?) is not allowed(?P<rest>.*)$")
_INVALID = re.compile(r"^(?P<arg>argument [^:]+): invalid (?P<kind>[\w ]+?) value: .*$")
_CHOICE = re.compile(r"^(?P<arg>argument [^:]+): invalid choice: .*? \(choose from (?P<choices>.*)\)$")
_KEY = re.compile(r"^config_overrides key .* is not allowed(?P<rest>.*)$")
_NUMBER_IN_PARENS = re.compile(r"\((?:-?[\d.]+(?:e[+-]?\d+)?|inf|-inf|nan)\)")
_PARAMKEY = re.compile(r"ParamKey\(.*?\)\]")


def _override_keys() -> tuple:
    global OVERRIDE_KEYS
    if OVERRIDE_KEYS is None:
        sys.path.insert(0, str(REPO))
        from megatron_opt.config import OVERRIDE_KEYS as keys

        OVERRIDE_KEYS = tuple(keys)
    return OVERRIDE_KEYS


def shape_of(message: str) -> str:
    """The message with the value given replaced by <value> (and random override keys by <key>)."""
    message = message.strip()
    if message.startswith("unrecognized arguments:"):
        return "unrecognized arguments: <tokens>"
    m = _KEY.match(message)
    if m:
        return "config_overrides key <value> is not allowed" + m["rest"]
    m = _CHOICE.match(message)
    if m:
        return f"{m['arg']}: invalid choice: <value> (choose from {m['choices']})"
    m = _INVALID.match(message)
    if m:
        return f"{m['arg']}: invalid {m['kind']} value: <value>"
    m = _ARGUMENT.match(message)
    if m:
        return f"{m['arg']}: <value> is not allowed" + _NUMBER_IN_PARENS.sub("(<value>)", m["rest"])
    m = _ASSIGNED.match(message)
    if m:
        field = _PARAMKEY.sub("ParamKey(...)]", m["field"])
        if field.startswith("config_overrides[") and "]." in field:
            head, key = field.split("].", 1)
            field = f"{head}].{key if key in _override_keys() else '<key>'}"
        return f"{field}=<value> is not allowed" + _NUMBER_IN_PARENS.sub("(<value>)", m["rest"])
    return _NUMBER_IN_PARENS.sub("(<value>)", message)


def run_suite(log: str) -> int:
    env = dict(os.environ, MEGATRON_OPT_FUZZ_LOG=log, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_fuzz_inputs.py"]
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def summarize(log: str) -> str:
    lines = [line for line in Path(log).read_text(encoding="utf-8").splitlines() if line.strip()]
    shapes = collections.Counter(shape_of(line) for line in lines)
    out = [f"{len(lines)} refusals, {len(shapes)} distinct messages (value given shown as `<value>`):", ""]
    out += [f"- `{shape}` ({count})" for shape, count in sorted(shapes.items())]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="summarize this log instead of running the suite")
    args = parser.parse_args()
    if args.log:
        print(summarize(args.log))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "messages.log")
        Path(log).touch()
        code = run_suite(log)
        print(summarize(log))
    return code


if __name__ == "__main__":
    sys.exit(main())
