"""What the installed CuPy offers, as data: the CuPy stand-in allows only these names and keywords.

The tables below are read from cupy 14 (``read_installed``), restricted to what the stand-in
can serve from NumPy; ``tests/devices/test_cuda_sim_drift.py`` reads them again from the installed
``cupy`` and fails on any difference, so the stand-in can never accept a method, a function or
a keyword that CuPy lacks. Regenerate them with ``python -m devnet.testing.cupy_surface``.

A parameter tuple lists the names CuPy accepts (``*name``: variadic positionals); ``None``
marks an attribute that is not a method (NDARRAY) or a ufunc (FUNCTIONS: keywords in
``UFUNC_KEYWORDS``).
"""

from __future__ import annotations

import re

# keywords every CuPy ufunc's __call__ takes: add(x1, x2, /, out=None, *, casting=, dtype=)
UFUNC_KEYWORDS = ("out", "casting", "dtype")

# @generated-tables (python -m devnet.testing.cupy_surface)
NDARRAY = {
    'T': None,
    'all': ('axis', 'out', 'keepdims'),
    'any': ('axis', 'out', 'keepdims'),
    'argmax': ('axis', 'out', 'dtype', 'keepdims'),
    'argmin': ('axis', 'out', 'dtype', 'keepdims'),
    'argpartition': ('kth', 'axis'),
    'argsort': ('axis', 'kind'),
    'astype': ('dtype', 'order', 'casting', 'subok', 'copy'),
    'base': None,
    'byteswap': ('inplace',),
    'choose': ('choices', 'out', 'mode'),
    'clip': ('min', 'max', 'out'),
    'compress': ('condition', 'axis', 'out'),
    'conj': (),
    'conjugate': (),
    'copy': ('order',),
    'cumprod': ('axis', 'dtype', 'out'),
    'cumsum': ('axis', 'dtype', 'out'),
    'data': None,
    'device': None,
    'diagonal': ('offset', 'axis1', 'axis2'),
    'dot': ('b', 'out'),
    'dtype': None,
    'dump': ('file',),
    'dumps': (),
    'fill': ('value',),
    'flags': None,
    'flat': None,
    'flatten': ('order',),
    'imag': None,
    'item': (),
    'itemsize': None,
    'mT': None,
    'max': ('axis', 'out', 'keepdims'),
    'mean': ('axis', 'dtype', 'out', 'keepdims'),
    'min': ('axis', 'out', 'keepdims'),
    'nbytes': None,
    'ndim': None,
    'nonzero': (),
    'partition': ('kth', 'axis'),
    'prod': ('axis', 'dtype', 'out', 'keepdims'),
    'put': ('indices', 'values', 'mode'),
    'ravel': ('order',),
    'real': None,
    'repeat': ('repeats', 'axis'),
    'reshape': ('*shape', 'order', 'copy'),
    'round': ('decimals', 'out'),
    'searchsorted': ('v', 'side', 'sorter'),
    'shape': None,
    'size': None,
    'sort': ('axis', 'kind'),
    'squeeze': ('axis',),
    'std': ('axis', 'dtype', 'out', 'ddof', 'keepdims'),
    'strides': None,
    'sum': ('axis', 'dtype', 'out', 'keepdims'),
    'swapaxes': ('axis1', 'axis2'),
    'take': ('indices', 'axis', 'out'),
    'tobytes': ('order',),
    'tofile': ('fid', 'sep', 'format'),
    'tolist': (),
    'trace': ('offset', 'axis1', 'axis2', 'dtype', 'out'),
    'transpose': ('*axes',),
    'var': ('axis', 'dtype', 'out', 'ddof', 'keepdims'),
    'view': ('dtype', 'type'),
}
GENERATOR = {
    'beta': ('a', 'b', 'size', 'dtype'),
    'binomial': ('n', 'p', 'size'),
    'chisquare': ('df', 'size'),
    'dirichlet': ('alpha', 'size'),
    'exponential': ('scale', 'size'),
    'f': ('dfnum', 'dfden', 'size'),
    'gamma': ('shape', 'scale', 'size'),
    'geometric': ('p', 'size'),
    'hypergeometric': ('ngood', 'nbad', 'nsample', 'size'),
    'integers': ('low', 'high', 'size', 'dtype', 'endpoint'),
    'logseries': ('p', 'size'),
    'poisson': ('lam', 'size'),
    'power': ('a', 'size'),
    'random': ('size', 'dtype', 'out'),
    'standard_exponential': ('size', 'dtype', 'method', 'out'),
    'standard_gamma': ('shape', 'size', 'dtype', 'out'),
    'standard_normal': ('size', 'dtype', 'out'),
    'uniform': ('low', 'high', 'size', 'dtype'),
}
FUNCTIONS = {
    'abs': None,
    'absolute': None,
    'add': None,
    'all': ('a', 'axis', 'out', 'keepdims'),
    'allclose': ('a', 'b', 'rtol', 'atol', 'equal_nan'),
    'any': ('a', 'axis', 'out', 'keepdims'),
    'arange': ('start', 'stop', 'step', 'dtype'),
    'argmax': ('a', 'axis', 'dtype', 'out', 'keepdims'),
    'argmin': ('a', 'axis', 'dtype', 'out', 'keepdims'),
    'array_equal': ('a1', 'a2', 'equal_nan'),
    'clip': ('a', 'a_min', 'a_max', 'out'),
    'concatenate': ('tup', 'axis', 'out', 'dtype', 'casting'),
    'copyto': ('dst', 'src', 'casting', 'where'),
    'cos': None,
    'count_nonzero': ('a', 'axis'),
    'divide': None,
    'dot': ('a', 'b', 'out'),
    'empty': ('shape', 'dtype', 'order'),
    'empty_like': ('prototype', 'dtype', 'order', 'subok', 'shape'),
    'exp': None,
    'expm1': None,
    'full': ('shape', 'fill_value', 'dtype', 'order'),
    'full_like': ('a', 'fill_value', 'dtype', 'order', 'subok', 'shape'),
    'isfinite': None,
    'isinf': None,
    'isnan': None,
    'linspace': ('start', 'stop', 'num', 'endpoint', 'retstep', 'dtype', 'axis'),
    'log': None,
    'log1p': None,
    'logaddexp': None,
    'matmul': ('*args', 'axes', 'axis', 'keepdims', 'casting', 'dtype', 'signature', 'order',
               'out'),
    'max': ('a', 'axis', 'out', 'keepdims'),
    'maximum': None,
    'mean': ('a', 'axis', 'dtype', 'out', 'keepdims'),
    'min': ('a', 'axis', 'out', 'keepdims'),
    'minimum': None,
    'multiply': None,
    'ones': ('shape', 'dtype', 'order'),
    'ones_like': ('a', 'dtype', 'order', 'subok', 'shape'),
    'prod': ('a', 'axis', 'dtype', 'out', 'keepdims'),
    'ravel': ('a', 'order'),
    'reshape': ('a', 'newshape', 'order', 'copy'),
    'sign': None,
    'sin': None,
    'sqrt': None,
    'square': None,
    'stack': ('tup', 'axis', 'out', 'dtype', 'casting'),
    'std': ('a', 'axis', 'dtype', 'out', 'ddof', 'keepdims'),
    'subtract': None,
    'sum': ('a', 'axis', 'dtype', 'out', 'keepdims'),
    'tanh': None,
    'unique': ('ar', 'return_index', 'return_inverse', 'return_counts', 'axis', 'equal_nan'),
    'where': ('condition', 'x', 'y'),
    'zeros': ('shape', 'dtype', 'order'),
    'zeros_like': ('a', 'dtype', 'order', 'subok', 'shape'),
}
# @end-tables


def _split_top(text):
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur] if cur.strip() else parts


def _doc_params(obj):
    """Parameter names from a Cython docstring's first line, ``f(self, int a, b=None)``."""
    first = (obj.__doc__ or "").strip().splitlines()[:1]
    m = re.match(r"^[\w.]+\((.*)\)( ->.*)?$", first[0]) if first else None
    if m is None:
        return None
    names = []
    for p in _split_top(m.group(1)):
        p = p.split("=")[0].strip().replace("\\", "")
        if p in ("*", "/"):
            continue
        names.append(p.split()[-1])
    return tuple(n for n in names if n != "self")


def _params(obj):
    import inspect

    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return _doc_params(obj)
    return tuple(("*" + p.name) if p.kind is p.VAR_POSITIONAL else p.name
                 for p in sig.parameters.values()
                 if p.name != "self" and p.kind is not p.VAR_KEYWORD)


def read_installed(cupy, ndarray_names, generator_names, function_names):
    """The three tables for these names, read from the installed ``cupy`` (absent names are
    left out, so a comparison shows them)."""
    import numpy as np

    ndarray = {}
    for name in ndarray_names:
        attr = getattr(cupy.ndarray, name, None)
        if attr is not None and hasattr(np.ndarray, name):
            ndarray[name] = _params(attr) if callable(attr) else None
    generator = {n: _params(getattr(cupy.random.Generator, n)) for n in generator_names
                 if hasattr(cupy.random.Generator, n) and hasattr(np.random.Generator, n)}
    functions = {}
    for name in function_names:
        fn = getattr(cupy, name, None)
        if fn is not None:
            functions[name] = None if isinstance(fn, cupy.ufunc) else _params(fn)
    return ndarray, generator, functions


def _generate():
    import cupy
    import numpy as np

    ndarray_names = [n for n in dir(cupy.ndarray) if not n.startswith("_")
                     and hasattr(np.ndarray, n)]
    generator_names = [n for n in dir(cupy.random.Generator) if not n.startswith("_")]
    try:
        function_names = list(FUNCTIONS)
    except NameError:
        function_names = []
    tables = read_installed(cupy, ndarray_names, generator_names, function_names)
    out = []
    for title, table in zip(("NDARRAY", "GENERATOR", "FUNCTIONS"), tables):
        out.append(f"{title} = {{")
        for name in sorted(table):
            out.append(f"    {name!r}: {table[name]!r},")
        out.append("}")
    return "\n".join(out)


if __name__ == "__main__":
    print(_generate())
