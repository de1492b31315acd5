"""Mutation check: does the suite notice a 1% error in any kernel's output?

For each output of each CPU kernel in turn (a loss value, a gradient, an activation, an
optimizer buffer) this wraps the kernel so that output comes out 1% wrong, runs the tests that
should notice, and records which test caught it. Optimizer buffers get the 1% error in their
*update* (``new = old + 1.01 (new - old)``), the subtle case: a 1% error in the parameter
itself is caught by any tolerance.

Not collected by pytest (no ``test_`` prefix). Run from the repository root::

    .venv/bin/python tests/mutation/devnet_mutate.py            # every mutation, a table
    .venv/bin/python tests/mutation/devnet_mutate.py adam_step_hyper  # only these kernels

Each mutation runs in its own pytest process that loads this file as a plugin
(``-p devnet_mutate`` with ``DEVNET_MUTATION=kernel:output``); the plugin patches
``devnet.kernels.cpu`` and the cached CPU backend's kernel tables before any test runs.
Exit status 0 when every mutation was caught, 1 otherwise.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ERROR = 0.01  # the injected relative error
ROOT = Path(__file__).resolve().parents[2]

# kernel -> its outputs: ("value",) the return value, ("scale", arg) an array written by the
# kernel, ("delta", arg) an array the kernel updates in place (the update gets the error)
_LOSS = (("value", None), ("scale", "grad"))
_STEPS = {
    "sgd_step": ("p",), "momentum_step": ("p", "buf"), "nesterov_step": ("p", "buf"),
    "rmsprop_step": ("p", "sq", "mom", "gavg"), "adam_step": ("p", "m", "v", "vmax"),
    "adamw_step": ("p", "m", "v", "vmax"),
}
OUTPUTS: dict[str, tuple] = {
    "bias_act_fwd": (("scale", "A"), ("scale", "Z")),
    "act_bwd": (("scale", "dZ"), ("scale", "db")),
    **{name: _LOSS for name in ("softmax_xent", "sigmoid_bce", "mse", "mae", "huber", "poisson")},
    # the deep-network kernels; ``out`` is written only when a residual R is given
    "layernorm_fwd": (("scale", "Y"), ("scale", "mean"), ("scale", "rstd")),
    "layernorm_bwd": (("scale", "dX"), ("scale", "dgamma"), ("scale", "dbeta")),
    "dropout_fwd": (("scale", "A"),),
    "bias_act_drop_fwd": (("scale", "A"), ("scale", "Z"), ("scale", "out")),
    "act_drop_bwd": (("scale", "dZ"), ("scale", "db")),
    # the optimizer: the step kernels reading their scalars from ``hyper`` (what training
    # runs), the advance and the clip writing ``hyper``, the L2 term
    **{f"{name}_hyper": tuple(("delta", arg) for arg in args) for name, args in _STEPS.items()},
    "opt_advance": (("delta", "hyper"),),
    "opt_clip": (("delta", "hyper"),),
    "l2_penalty": (("value", None), ("delta", "g")),
}

# which tests should catch a mutation of each kernel: (test file, -k expression)
_KERNEL_TESTS = "tests/kernels/test_kernels_cpu.py"
_DEEP_TESTS = "tests/model/test_deep.py"
_HYPER_TESTS = "tests/optim/test_optim_hyper.py"
_L2_CLIP_TESTS = "tests/kernels/test_l2_clip.py"
SELECT: dict[str, list[tuple[str, str]]] = {
    "bias_act_fwd": [(_KERNEL_TESTS, "test_bias_act_fwd_and_bwd")],
    "act_bwd": [(_KERNEL_TESTS, "test_bias_act_fwd_and_bwd")],
    "softmax_xent": [(_KERNEL_TESTS, "test_softmax_xent")],
    **{name: [(_KERNEL_TESTS, f"test_elementwise_losses and {name}")]
       for name in ("sigmoid_bce", "mse", "mae", "huber", "poisson")},
    **{name: [(_DEEP_TESTS, "test_layernorm_fused_matches_reference")]
       for name in ("layernorm_fwd", "layernorm_bwd")},
    "dropout_fwd": [(_DEEP_TESTS, "test_dropout_masks_are_bit_identical_and_have_the_rate")],
    **{name: [(_DEEP_TESTS, "test_activation_dropout_residual_fused_matches_reference")]
       for name in ("bias_act_drop_fwd", "act_drop_bwd")},
    # the step tests run each in-place entry against the oracle's by-value step (the
    # optimizer-level tests build their host-side oracle from the same, mutated, entry)
    **{f"{name}_hyper": [(_KERNEL_TESTS, "test_simple_steps and " + name)]
       for name in ("sgd_step", "momentum_step", "nesterov_step")},
    "rmsprop_step_hyper": [(_KERNEL_TESTS, "test_rmsprop_step")],
    "adam_step_hyper": [(_KERNEL_TESTS, "test_adam_steps and adam_step")],
    "adamw_step_hyper": [(_KERNEL_TESTS, "test_adam_steps and adamw_step")],
    "opt_advance": [(_HYPER_TESTS, "bit_identical or thousands_of_steps or advance")],
    "opt_clip": [(_L2_CLIP_TESTS, "clip")],
    "l2_penalty": [(_L2_CLIP_TESTS, "l2")],
}
# the kernels a training step runs (relu/tanh/gelu MLP, cross-entropy, Adam): the end-to-end
# parity test must catch these too, independently of the kernel tests
PARITY = ("tests/kernels/test_parity.py", "test_fused_cpu_kernels_match_reference_step_by_step")
PARITY_KERNELS = ("bias_act_fwd", "act_bwd", "softmax_xent", "adam_step_hyper", "opt_advance")
# outputs the parity run never produces: Adam there runs without amsgrad (vmax is None)
PARITY_NOT_RUN = ("adam_step_hyper:vmax",)
# the kernels a deep model (residual + LayerNorm + dropout) runs: its end-to-end comparison with
# the reference table must catch them too (dropout_fwd alone is not in a model's step)
DEEP_PARITY = (_DEEP_TESTS, "test_fused_model_matches_the_reference_kernels")
DEEP_PARITY_KERNELS = ("layernorm_fwd", "layernorm_bwd", "bias_act_drop_fwd", "act_drop_bwd")


def mutate(kernel: str, output: tuple, fn):
    """``fn`` with ``output`` made 1% wrong (see the module docstring)."""
    kind, arg = output
    params = list(inspect.signature(fn).parameters)

    def mutated(*args, **kwargs):
        bound = dict(zip(params, args, strict=False), **kwargs)
        target = bound.get(arg) if arg else None
        before = np.array(target, copy=True) if kind == "delta" and target is not None \
            else None
        result = fn(*args, **kwargs)
        if kind == "value":
            return result * (1 + ERROR)
        if target is not None:
            if kind == "scale":
                target *= 1 + ERROR
            else:
                target[...] = before + (1 + ERROR) * (target - before)
        return result

    mutated.__name__ = getattr(fn, "__name__", kernel)
    mutated.__wrapped__ = fn
    return mutated


def install(spec: str) -> None:
    """Patch ``devnet.kernels.cpu`` and both tables of the cached CPU backend (the public
    ``kernels`` and the ``raw_kernels`` devnet's own passes and steps call) with mutation
    ``kernel:output``."""
    from devnet.kernels import cpu

    import devnet as dn

    kernel, _, out = spec.partition(":")
    output = next(o for o in OUTPUTS[kernel] if (o[1] or "value") == out)
    entry = getattr(cpu, kernel)
    wrapped = mutate(kernel, output, entry)
    wrapped.unchecked = mutate(kernel, output, getattr(entry, "unchecked", entry))
    setattr(cpu, kernel, wrapped)  # a backend built later collects both from here
    be = dn.get_backend("cpu")
    setattr(be.kernels, kernel, wrapped)
    setattr(be.raw_kernels, kernel, wrapped.unchecked)


def pytest_configure(config):
    spec = os.environ.get("DEVNET_MUTATION")
    if spec:
        install(spec)


# --- the driver ---------------------------------------------------------------------------------

def _run(spec: str, path: str, select: str, timeout: float) -> tuple[str, str]:
    """(verdict, detail): 'caught' with the failing test id, 'survived', or 'error'."""
    env = dict(os.environ, DEVNET_MUTATION=spec,
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p",
           "no:randomly", "-p", "devnet_mutate", path, "-k", select, "-rf"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error", f"timeout after {timeout:.0f} s"
    out = proc.stdout + proc.stderr
    if proc.returncode == 1:
        hit = re.search(r"^FAILED (\S+)", out, re.M)
        return "caught", hit.group(1).split("::", 1)[-1] if hit else "?"
    if proc.returncode == 0:
        return "survived", re.findall(r"\d+ passed", out)[-1] if "passed" in out else ""
    return "error", out.strip().splitlines()[-1] if out.strip() else f"exit {proc.returncode}"


def main(argv: list[str]) -> int:
    kernels = argv or list(OUTPUTS)
    unknown = [k for k in kernels if k not in OUTPUTS]
    if unknown:
        print(f"unknown kernels {unknown}; valid: {', '.join(OUTPUTS)}", file=sys.stderr)
        return 2
    rows, failed = [], 0
    for kernel in kernels:
        for output in OUTPUTS[kernel]:
            spec = f"{kernel}:{output[1] or 'value'}"
            suites = list(SELECT[kernel])
            if kernel in PARITY_KERNELS and spec not in PARITY_NOT_RUN:
                suites.append(PARITY)
            if kernel in DEEP_PARITY_KERNELS:
                suites.append(DEEP_PARITY)
            for path, select in suites:
                t0 = time.perf_counter()
                verdict, detail = _run(spec, path, select, timeout=900)
                failed += verdict != "caught"
                rows.append((spec, Path(path).name, verdict, detail,
                             time.perf_counter() - t0))
                print(f"{spec:<22} {Path(path).name:<20} {verdict:<8} {detail} "
                      f"({rows[-1][4]:.0f} s)", flush=True)
    print("\n| mutation (1% error) | test file | verdict | first failing test |")
    print("| --- | --- | --- | --- |")
    for spec, path, verdict, detail, _ in rows:
        print(f"| `{spec}` | {path} | {verdict} | `{detail}` |")
    print(f"\n{len(rows) - failed} of {len(rows)} caught")
    from devnet.kernels import reference

    uncovered = [k for k in reference.KERNEL_NAMES if k not in OUTPUTS]
    if uncovered:
        print(f"kernels with no mutation defined here (add them to OUTPUTS and SELECT): "
              f"{', '.join(uncovered)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
