"""fit of a model with dropout on the compiled engine: where the Python step ends, bit for bit
(parameters, optimizer state, history), across epochs, blocks and a resume."""

from __future__ import annotations

import numpy as np
import pytest

import devnet as dn
from devnet.train import compiled

pytestmark = pytest.mark.skipif(compiled.unavailable(dn.get_backend("cpu")) is not None,
                                reason=str(compiled.unavailable(dn.get_backend("cpu"))))


def equal(a, b) -> bool:
    if compiled.products_agree():
        return np.array_equal(a, b, equal_nan=True)
    return np.allclose(a, b, equal_nan=True, rtol=1e-4, atol=1e-6)


def data(rng, n, d, k, dtype):
    X = rng.normal(size=(n, d)).astype(dtype)
    y = np.argmax(X[:, :k] + 0.3 * rng.normal(size=(n, k)), axis=1).astype(np.int64)
    return X, y


def fit(engine, sizes, seed, X, y, act, dtype, p, opt_kw, **kw):
    model = dn.MLP(sizes, activation=act, dtype=dtype, seed=seed, backend="cpu", dropout=p)
    kw_ = dict(opt_kw)
    opt = dn.optim.get(kw_.pop("name"), model.parameters(), lr=0.02, **kw_)
    hist = dn.fit(model, X, y, optimizer=opt, engine=engine, progress=False, seed=seed, **kw)
    return model, opt, hist


def same(a, b):
    (ma, oa, ha), (mb, ob, hb) = a, b
    assert equal(ma.params, mb.params)
    for k in oa.state:
        assert equal(oa.state[k], ob.state[k]), k
    assert oa.t == ob.t
    assert equal(ha.history["loss"], hb.history["loss"])


@pytest.mark.parametrize("act, dtype, p, weighted", [
    ("relu", "float32", 0.5, True), ("tanh", "float64", 0.1, False),
    ("gelu", "float32", 0.1, False), ("silu", "float64", 0.5, True),
    ("leaky_relu", "float32", 0.1, True), ("sigmoid", "float64", 0.5, False),
    ("identity", "float32", 0.5, False)])
def test_fit_with_dropout_compiled_ends_where_python_ends(rng, act, dtype, p, weighted):
    X, y = data(rng, int(rng.integers(40, 80)), 6, 3, dtype)
    bs = int(rng.integers(5, 12))
    if len(X) % bs == 0:  # a partial last batch
        X, y = X[:-1], y[:-1]
    sw = rng.uniform(0.2, 1.0, len(X)) if weighted else None
    seed = int(rng.integers(1 << 30))
    kw = dict(epochs=3, batch_size=bs, sample_weight=sw, guard_every=int(rng.integers(2, 6)))
    opt_kw = dict(name=str(rng.choice(["adam", "sgd"])))
    runs = [fit(e, [6, 9, 7, 3], seed, X, y, act, dtype, p, opt_kw, **kw)
            for e in ("python", "compiled")]
    assert [r[2].params["engine"] for r in runs] == ["python", "compiled"]
    same(*runs)
    # and other masks than a fit without dropout
    assert not equal(runs[0][0].params,
                     fit("python", [6, 9, 7, 3], seed, X, y, act, dtype, 0.0, opt_kw,
                         **kw)[0].params)


def test_fit_with_dropout_resumes_compiled_where_python_runs_on(rng, tmp_path):
    # two epochs compiled with a checkpoint, a fresh model resumed from it for two more,
    # against four uninterrupted epochs of the Python step
    X, y = data(rng, int(rng.integers(40, 80)), 6, 3, "float32")
    seed = int(rng.integers(1 << 30))
    # a constant rate: a schedule planned for two epochs would end at the checkpoint
    kw = dict(batch_size=int(rng.integers(5, 12)), optimizer="adam", lr=0.02,
              progress=False, seed=seed)
    path = tmp_path / "ck.safetensors"
    models, hists = [], []
    for engine, epochs, ck in (("python", 4, None), ("compiled", 2, path), ("compiled", 4, None)):
        model = dn.MLP([6, 9, 7, 3], seed=seed, backend="cpu", dropout=0.3)
        hists.append(dn.fit(model, X, y, engine=engine, epochs=epochs, checkpoint=ck,
                            resume_from=path if ck is None and engine == "compiled" else None,
                            **kw))
        models.append(model)
    assert hists[2].params["engine"] == "compiled"
    assert equal(models[0].params, models[2].params)
    assert equal(hists[0].history["loss"], hists[2].history["loss"])
