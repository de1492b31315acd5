"""L-BFGS suite: ``devnet.sklearn`` vs scikit-learn, ``solver="lbfgs"``, hidden (100,).

Both estimators get the same data, seed and ``max_iter`` and follow the same iterates (devnet's
run matches scikit-learn's to rounding), so seconds per iteration compare like for like; the
ratio is taken within one run. Data: digits (1797x64, 10 classes, standardised) and a synthetic
20000x100 10-class set. devnet's extra cost per evaluation is one host -> device copy of the
parameters and one device -> host copy of the gradient (nothing on the CPU).

    python -m benchmarks.bench_lbfgs [--device cpu] [--quick]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

DATASETS = {"digits": None, "synthetic": (20000, 100)}
QUICK = {"digits": None, "synthetic": (2000, 20)}


def _data(name, shape, seed=0):
    if shape is None:
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
    else:
        from sklearn.datasets import make_classification

        X, y = make_classification(n_samples=shape[0], n_features=shape[1],
                                   n_informative=min(20, shape[1] // 2),
                                   n_classes=10, random_state=seed)
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    return X, y


def _per_iteration(cls, X, y, max_iter, seed, **kw) -> tuple[float, int]:
    est = cls(hidden_layer_sizes=(100,), solver="lbfgs", max_iter=max_iter, random_state=seed,
              **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit(X, y)
        seconds = time.perf_counter() - t0
    return seconds / est.n_iter_, est.n_iter_


def run(device: str = "cpu", datasets=None, max_iter: int = 50, seed: int = 0,
        log=print) -> list[dict]:
    """One row per data set: seconds per L-BFGS iteration for devnet and scikit-learn."""
    from sklearn.neural_network import MLPClassifier as SkMLP

    from devnet.sklearn import MLPClassifier

    datasets = DATASETS if datasets is None else datasets
    rows = []
    for name, shape in datasets.items():
        X, y = _data(name, shape, seed)
        # compile devnet's kernels for this shape and dtype before timing
        _per_iteration(MLPClassifier, X[:50], y[:50], 2, seed, device=device)
        dn_s, dn_it = _per_iteration(MLPClassifier, X, y, max_iter, seed, device=device)
        sk_s, sk_it = _per_iteration(SkMLP, X, y, max_iter, seed)
        row = {"dataset": name, "shape": list(X.shape), "device": device,
               "devnet_iter_s": dn_s, "sklearn_iter_s": sk_s, "devnet_iters": dn_it,
               "sklearn_iters": sk_it, "devnet_over_sklearn": dn_s / sk_s}
        log(f"  lbfgs (100,) {name} {X.shape[0]}x{X.shape[1]}: devnet {dn_s * 1e3:.2f} ms/iter "
            f"({dn_it} iters), sklearn {sk_s * 1e3:.2f} ms/iter ({sk_it} iters), "
            f"ratio {dn_s / sk_s:.3f}")
        rows.append(row)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="small data (a smoke test)")
    args = parser.parse_args(argv)
    return run(args.device, QUICK if args.quick else DATASETS, args.max_iter)


if __name__ == "__main__":
    main()
