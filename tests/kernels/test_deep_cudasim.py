"""The deep-network CUDA kernels (``kernels/cuda/deep.py``) under Numba's CUDA simulator.

One small subprocess with ``NUMBA_ENABLE_CUDASIM=1`` and ``DEVNET_CUDA_SIMULATOR=1`` set before
numba is imported (this pytest process has imported it already): the LayerNorm and dropout
kernels against the reference and the fused CPU kernels in both dtypes, dropout masks bit for bit
on all three (a shard's, keyed by its global first row ``row0``, too), and a residual +
LayerNorm + dropout model on the (simulated) CUDA backend: its gradients against the CPU
model's and against finite differences on a sample of parameters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import devnet as dn
    from devnet.kernels import cpu, reference as ref, scalar
    from devnet.kernels import cuda as kc

    seed = int(sys.argv[1])
    rng = np.random.default_rng(seed)
    assert kc.SIMULATOR and kc.layernorm_fwd.__module__ == "devnet.kernels.cuda.deep"
    tol = {np.float32: 3e-5, np.float64: 1e-12}

    def close(a, b, dt, scale=1.0):
        big = max(1.0, scale, float(np.abs(b).max(initial=0)))
        assert np.allclose(a, b, rtol=tol[dt], atol=tol[dt] * big), float(np.abs(a - b).max())

    for dt in (np.float32, np.float64):
        n, m = 11, 37  # not multiples of the block shapes; SIM_MAX_BLOCKS wraps the grids
        X = (rng.standard_normal((n, m)) * 2 + rng.uniform(-20, 20)).astype(dt)
        gamma, beta = rng.standard_normal(m).astype(dt), rng.standard_normal(m).astype(dt)
        outs = []
        for k in (kc, ref):
            Y, mu, r = (np.full(s, np.nan, dt) for s in ((n, m), n, n))
            k.layernorm_fwd(X, gamma, beta, Y, mu, r)
            outs.append((Y, mu, r))
        for a, b in zip(*outs):
            close(a, b, dt)
        G, R = rng.standard_normal((n, m)).astype(dt), rng.standard_normal((n, m)).astype(dt)
        res = []
        for k in (kc, ref):
            dX, dg, db = np.full((n, m), np.nan, dt), np.full(m, np.nan, dt), \\
                np.full(m, np.nan, dt)
            k.layernorm_bwd(G, X, outs[1][1], outs[1][2], gamma, dX, dg, db, R)
            res.append((dX, dg, db))
        close(res[0][0], res[1][0], dt, float(outs[1][2].max() * np.abs(G * gamma).max()))
        close(res[0][1], res[1][1], dt)
        close(res[0][2], res[1][2], dt)

        key = scalar.dropout_key(int(rng.integers(2**63)), int(rng.integers(10**6)), 5)
        masks = []
        for k in (kc, ref, cpu):
            A = np.ones((n, m), dt)
            k.dropout_fwd(A, 0.35, key)
            masks.append(A)
        assert (masks[0] == masks[1]).all() and (masks[0] == masks[2]).all()
        for act in ("sigmoid", "gelu"):
            A0 = rng.standard_normal((n, m)).astype(dt)
            got = []
            for k in (kc, ref):
                A = A0.copy()
                Z = np.full_like(A, np.nan) if act == "gelu" else None
                out = np.full_like(A, np.nan)
                k.bias_act_drop_fwd(act, A, beta, Z, 0.01, 0.35, key, R, out)
                dZ, db = np.full_like(A, np.nan), np.full(m, np.nan, dt)
                k.act_drop_bwd(act, G, A, Z, dZ, db, 0.01, 0.35, key)
                got.append((A, out, dZ, db))
            for a, b in zip(*got):
                close(a, b, dt)
            # dropped exactly where the mask says (a kept gelu of z < -5 may round to 0 in one
        # and to -2e-7 in the other: compare against the mask, not the zero patterns)
        keep = ref.dropout_mask(np, (n, m), 0.35, key)
        for a in (got[0][0], got[1][0]):
            assert (a[~keep] == 0).all()

        # a shard (rows r0..r0+k-1, row0=r0) gets the whole batch's masks there, so the ranks
        # of a data-parallel step drop what one process would
        r0 = int(rng.integers(1, n - 2))
        rows = slice(r0, r0 + int(rng.integers(1, n - r0 + 1)))
        A0, Gs = rng.standard_normal((n, m)).astype(dt), G.copy()
        shard = {}
        for name, kw, a0, r, g in (("whole", {}, A0, R, Gs),
                                   ("shard", {"row0": r0}, A0[rows], R[rows], Gs[rows])):
            A, Z, out = a0.copy(), np.full_like(a0, np.nan), np.full_like(a0, np.nan)
            kc.bias_act_drop_fwd("gelu", A, beta, Z, 0.01, 0.35, key, r.copy(), out, **kw)
            dZ = np.full_like(a0, np.nan)
            kc.act_drop_bwd("gelu", g.copy(), A, Z, dZ, np.full(m, np.nan, dt), 0.01, 0.35,
                            key, **kw)
            D = np.ones_like(a0)
            kc.dropout_fwd(D, 0.35, key, **kw)
            shard[name] = (A, out, dZ, D)
        for a, b in zip(shard["shard"], shard["whole"]):
            assert (a == b[rows]).all()
        D = np.ones_like(A0[rows])
        cpu.dropout_fwd(D, 0.35, key, r0)
        assert (D == shard["shard"][3]).all()

    # the model on the simulated CUDA backend: gradients as on the CPU, and as differences
    gpu = dn.get_backend("cuda")
    sizes = [4, 5, 5, 3]
    X, Rg = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    kw = dict(activation="tanh", dtype="float64", block="residual", norm="layernorm",
              dropout=0.3, seed=2)
    host = dn.MLP(sizes, backend="cpu", **kw)
    dev = dn.MLP(sizes, backend=gpu, **kw)
    noise = 0.1 * rng.standard_normal(host.n_params)
    host.params[...] += noise
    dev.params[...] = gpu.asarray(host.params)
    close(gpu.to_numpy(dev.forward(X, training=True, step=4)),
          host.forward(X, training=True, step=4), np.float64)
    dev.backward(Rg)
    host.backward(Rg)
    close(gpu.to_numpy(dev.grads), host.grads, np.float64)
    g = gpu.to_numpy(dev.grads)
    h = 1e-5
    for k in rng.choice(dev.n_params, 8, replace=False):
        vals = []
        for d in (1, -1):
            p = gpu.to_numpy(dev.params)
            p[k] = host.params[k] + d * h
            dev.params[...] = gpu.asarray(p)
            vals.append(float((gpu.to_numpy(dev.forward(X, training=True, step=4)) * Rg).sum()))
        dev.params[...] = gpu.asarray(host.params)
        fd = (vals[0] - vals[1]) / (2 * h)
        assert abs(fd - g[k]) <= 1e-6 * max(abs(fd), abs(g[k]), 1e-3 * np.abs(g).max()), k
    print("ok")
''')


def test_deep_kernels_and_model_under_the_cuda_simulator(rng):
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "DEVNET_CUDA_SIMULATOR": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(int(rng.integers(2**31)))],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
