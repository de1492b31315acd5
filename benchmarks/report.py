"""Output: the stdout tables, the targets check, the JSON file and the PNG plots."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

SCHEMA = "devnet-bench/1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The targets on the 2-core CPU: (name, suite, config, field, op, bound).
TARGETS = (
    ("devnet step / PyTorch step, M", "step", "M", "devnet_over_torch", "<=", 0.9),
    ("devnet step / PyTorch step, M1", "step", "M1", "devnet_over_torch", "<=", 0.6),
    ("devnet step / PyTorch step, S", "step", "S", "devnet_over_torch", "<=", 0.3),
    ("devnet step / PyTorch step, tiny", "step", "tiny", "devnet_over_torch", "<=", 0.1),
    ("devnet epoch / sklearn epoch, 60000x784 (256,256) b128", "sklearn", "sklearn-target",
     "devnet_over_sklearn", "<=", 0.3),
    ("devnet step / GEMM floor, M", "step", "M", "devnet_over_floor", "<=", 1.15),
    ("fused kernel GB/s / copy GB/s, >= 64 MB (worst kernel)", "kernels", None,
     "fused_over_copy", ">=", 0.7),
    ("fused kernel / unfused NumPy, 1M float32 (worst kernel)", "fusion", None, "speedup",
     ">=", 2.0),
)
# Targets with no config take the worst row of their suite among these rows.
_WORST_OF = {"kernels": lambda r: r["size_mb"] >= 64, "fusion": lambda r: True}


def check_targets(results: dict) -> list[dict]:
    """Each target with its measured value (None when its suite did not run) and met flag."""
    out = []
    for name, suite, config, field, op, bound in TARGETS:
        rows = results.get(suite) or []
        if config is None:
            worst = min((r for r in rows if _WORST_OF[suite](r)), key=lambda r: r[field],
                        default=None)
            value = None if worst is None else worst[field]
            where = None if worst is None else worst["kernel"]
        else:
            if isinstance(rows, dict):
                rows = [rows]
            hit = [r for r in rows if r.get("config") == config and field in r]
            value = hit[0][field] if hit else None
            where = config
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out.append({"target": name, "field": field, "where": where, "op": op, "bound": bound,
                    "value": value, "met": met})
    return out


# --- tables -------------------------------------------------------------------------------------

def _fmt(v, unit="") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if unit == "ms":
        return f"{v * 1e3:.4g}"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with right-aligned columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=False))
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def render(results: dict) -> str:
    """Every suite's table plus the targets, as printed on stdout."""
    parts = []
    m = results["meta"]
    thr = m["threads"]
    blas = ", ".join(f"{p['internal_api']}x{p['num_threads']}" for p in thr["pools"]) or "?"
    parts.append(f"devnet bench on {m['host']} ({m['device']}: {m['device_name']}), "
                 f"kernels={m['kernels']}, threads: BLAS {blas}, numba {thr['numba']}, "
                 f"torch {thr['torch']}; load average {m.get('loadavg_start')} (start)")
    if results.get("kernels"):
        parts.append("\nkernels (GB/s = minimal bytes moved / median time; copy = same run)")
        parts.append(table(
            ["kernel", "MB", "fused ms", "fused GB/s", "unfused GB/s", "copy GB/s",
             "fused/copy", "speedup"],
            [[r["kernel"], _fmt(r["size_mb"]), _fmt(r["fused_s"], "ms"), _fmt(r["fused_gbs"]),
              _fmt(r["unfused_gbs"]), _fmt(r["copy_gbs"]), _fmt(r["fused_over_copy"]),
              _fmt(r["speedup"])] for r in results["kernels"]]))
    if results.get("fusion"):
        r0 = results["fusion"][0]
        parts.append(f"\nfusion (fused kernel vs the unfused NumPy/CuPy sequence it replaces, "
                     f"{r0['elements']} {r0['dtype']} elements)")
        parts.append(table(
            ["kernel", "fused ms", "unfused ms", "speedup"],
            [[r["kernel"], _fmt(r["fused_s"], "ms"), _fmt(r["unfused_s"], "ms"),
              _fmt(r["speedup"])] for r in results["fusion"]]))
    if results.get("step"):
        parts.append("\ntraining step (median; Adam, float32)")
        parts.append(table(
            ["config", "arch", "batch", "devnet ms", "samples/s", "torch ms", "devnet/torch",
             "floor ms", "devnet/floor", "torch floor ms", "epoch devnet/sklearn"],
            [[r["config"], "-".join(map(str, r["sizes"])), str(r["batch"]),
              _fmt(r["devnet_s"], "ms"), f"{r['samples_per_s']:.0f}",
              _fmt(r.get("torch_s"), "ms"), _fmt(r.get("devnet_over_torch")),
              _fmt(r["floor_s"], "ms"), _fmt(r["devnet_over_floor"]),
              _fmt(r.get("torch_floor_s"), "ms"), _fmt(r.get("devnet_over_sklearn"))]
             for r in results["step"]]))
    if results.get("sklearn"):
        r = results["sklearn"]
        parts.append(f"\nepoch vs scikit-learn: {r['epoch_samples']}x{r['sizes'][0]} "
                     f"hidden {tuple(r['sizes'][1:-1])} b{r['batch']}: devnet "
                     f"{r['devnet_epoch_s']:.3f} s, sklearn {r['sklearn_epoch_s']:.3f} s, "
                     f"ratio {r['devnet_over_sklearn']:.3f}")
    if results.get("scaling"):
        parts.append("\nscaling (step time; GFLOP/s of the matrix products)")
        parts.append(table(
            ["sweep", "arch", "batch", "devnet ms", "floor ms", "torch ms", "devnet GFLOP/s",
             "floor GFLOP/s", "devnet/floor", "devnet/torch"],
            [[r["sweep"], "-".join(map(str, r["sizes"])), str(r["batch"]),
              _fmt(r["devnet_s"], "ms"), _fmt(r["floor_s"], "ms"), _fmt(r.get("torch_s"), "ms"),
              _fmt(r["devnet_gflops"]), _fmt(r["floor_gflops"]), _fmt(r["devnet_over_floor"]),
              _fmt(r.get("devnet_over_torch"))] for r in results["scaling"]]))
    if results.get("threads"):
        parts.append("\nthread pools (step with serial vs Numba-parallel elementwise kernels)")
        parts.append(table(
            ["config", "arch", "batch", "serial ms", "parallel ms", "parallel/serial"],
            [[r["config"], "-".join(map(str, r["sizes"])), str(r["batch"]),
              _fmt(r["serial_s"], "ms"), _fmt(r["parallel_s"], "ms"),
              _fmt(r["parallel_over_serial"])] for r in results["threads"]]))
    if results.get("targets"):
        parts.append("\ntargets (the issue's, for the 2-core CPU)")
        parts.append(table(
            ["target", "where", "measured", "bound", "met"],
            [[t["target"], str(t["where"] or "-"), _fmt(t["value"]), f"{t['op']} {t['bound']}",
              {True: "yes", False: "NO", None: "not run"}[t["met"]]]
             for t in results["targets"]]))
    return "\n".join(parts)


# --- files --------------------------------------------------------------------------------------

def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


def result_path(results: dict, out_dir: Path | None = None) -> Path:
    """``<out_dir>/<host>-<device>-<date>.json`` (device e.g. ``cpu`` or ``cuda0-H100``)."""
    m = results["meta"]
    device = m["device"] if m["device"] == "cpu" else f"{m['device']}-{m['device_name']}"
    return Path(out_dir or RESULTS_DIR) / f"{_slug(m['host'])}-{_slug(device)}-{m['date']}.json"


def write_json(results: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    return path


def write_plots(results: dict, stem: Path) -> list[Path]:
    """PNG plots next to the JSON (``<stem>-kernels.png``, ``-step.png``, ``-scaling.png``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if results.get("kernels"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        names = sorted({r["kernel"] for r in results["kernels"]})
        for name in names:
            rs = [r for r in results["kernels"] if r["kernel"] == name]
            ax.plot([r["size_mb"] for r in rs], [r["fused_gbs"] for r in rs], "o-", label=name)
        rs = [r for r in results["kernels"] if r["kernel"] == names[0]]
        ax.plot([r["size_mb"] for r in rs], [r["copy_gbs"] for r in rs], "k--", lw=2,
                label="copy (ceiling)")
        ax.set(xscale="log", xlabel="operand size (MB)", ylabel="GB/s",
               title="fused kernels vs copy bandwidth")
        ax.legend(fontsize=7)
        written.append(_save(fig, stem, "kernels"))
    if results.get("step"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rs = results["step"]
        x = range(len(rs))
        for off, key, label in ((-0.3, "devnet_s", "devnet"), (-0.1, "floor_s", "GEMM floor"),
                                (0.1, "torch_s", "PyTorch")):
            ax.bar([i + off for i in x], [r.get(key, 0) * 1e3 for r in rs], 0.2, label=label)
        ax.set_xticks(list(x), [f"{r['config']}\nb{r['batch']}" for r in rs])
        ax.set(yscale="log", ylabel="ms / step", title="training step (Adam, float32)")
        ax.legend()
        written.append(_save(fig, stem, "step"))
    if results.get("scaling"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, sweep, xkey in zip(axes, ("batch", "width"), ("batch", "width"), strict=False):
            rs = [r for r in results["scaling"] if r["sweep"] == sweep]
            if not rs:
                continue
            for key, label in (("devnet_s", "devnet"), ("floor_s", "GEMM floor"),
                               ("torch_s", "PyTorch")):
                if all(key in r for r in rs):
                    ax.plot([r[xkey] for r in rs], [r[key] * 1e3 for r in rs], "o-", label=label)
            ax.set(xscale="log", yscale="log", xlabel=xkey, ylabel="ms / step",
                   title=f"step time vs {xkey}")
            ax.legend()
        written.append(_save(fig, stem, "scaling"))
    return written


def _save(fig, stem: Path, suffix: str) -> Path:
    import matplotlib.pyplot as plt

    path = stem.with_name(f"{stem.name}-{suffix}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
