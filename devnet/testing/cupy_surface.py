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
import textwrap

# keywords every CuPy ufunc's __call__ takes: add(x1, x2, /, out=None, *, casting=, dtype=)
UFUNC_KEYWORDS = ("out", "casting", "dtype")

# @generated-tables (python -m devnet.testing.cupy_surface)
NDARRAY = {
    **dict.fromkeys((  # attributes, not methods
        'T', 'base', 'data', 'device', 'dtype', 'flags', 'flat', 'imag', 'itemsize', 'mT',
        'nbytes', 'ndim', 'real', 'shape', 'size', 'strides')),
    'all': ('axis', 'out', 'keepdims'),
    'any': ('axis', 'out', 'keepdims'),
    'argmax': ('axis', 'out', 'dtype', 'keepdims'),
    'argmin': ('axis', 'out', 'dtype', 'keepdims'),
    'argpartition': ('kth', 'axis'),
    'argsort': ('axis', 'kind'),
    'astype': ('dtype', 'order', 'casting', 'subok', 'copy'),
    'byteswap': ('inplace',),
    'choose': ('choices', 'out', 'mode'),
    'clip': ('min', 'max', 'out'),
    'compress': ('condition', 'axis', 'out'),
    'conj': (),
    'conjugate': (),
    'copy': ('order',),
    'cumprod': ('axis', 'dtype', 'out'),
    'cumsum': ('axis', 'dtype', 'out'),
    'diagonal': ('offset', 'axis1', 'axis2'),
    'dot': ('b', 'out'),
    'dump': ('file',),
    'dumps': (),
    'fill': ('value',),
    'flatten': ('order',),
    'item': (),
    'max': ('axis', 'out', 'keepdims'),
    'mean': ('axis', 'dtype', 'out', 'keepdims'),
    'min': ('axis', 'out', 'keepdims'),
    'nonzero': (),
    'partition': ('kth', 'axis'),
    'prod': ('axis', 'dtype', 'out', 'keepdims'),
    'put': ('indices', 'values', 'mode'),
    'ravel': ('order',),
    'repeat': ('repeats', 'axis'),
    'reshape': ('*shape', 'order', 'copy'),
    'round': ('decimals', 'out'),
    'searchsorted': ('v', 'side', 'sorter'),
    'sort': ('axis', 'kind'),
    'squeeze': ('axis',),
    'std': ('axis', 'dtype', 'out', 'ddof', 'keepdims'),
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
    **dict.fromkeys((  # ufuncs
        'abs', 'absolute', 'add', 'cos', 'divide', 'exp', 'expm1', 'isfinite', 'isinf', 'isnan',
        'log', 'log1p', 'logaddexp', 'maximum', 'minimum', 'multiply', 'sign', 'sin', 'sqrt',
        'square', 'subtract', 'tanh')),
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
    'count_nonzero': ('a', 'axis'),
    'dot': ('a', 'b', 'out'),
    'empty': ('shape', 'dtype', 'order'),
    'empty_like': ('prototype', 'dtype', 'order', 'subok', 'shape'),
    'full': ('shape', 'fill_value', 'dtype', 'order'),
    'full_like': ('a', 'fill_value', 'dtype', 'order', 'subok', 'shape'),
    'linspace': ('start', 'stop', 'num', 'endpoint', 'retstep', 'dtype', 'axis'),
    'matmul': ('*args', 'axes', 'axis', 'keepdims', 'casting', 'dtype', 'signature', 'order',
               'out'),
    'max': ('a', 'axis', 'out', 'keepdims'),
    'mean': ('a', 'axis', 'dtype', 'out', 'keepdims'),
    'min': ('a', 'axis', 'out', 'keepdims'),
    'ones': ('shape', 'dtype', 'order'),
    'ones_like': ('a', 'dtype', 'order', 'subok', 'shape'),
    'prod': ('a', 'axis', 'dtype', 'out', 'keepdims'),
    'ravel': ('a', 'order'),
    'reshape': ('a', 'newshape', 'order', 'copy'),
    'stack': ('tup', 'axis', 'out', 'dtype', 'casting'),
    'std': ('a', 'axis', 'dtype', 'out', 'ddof', 'keepdims'),
    'sum': ('a', 'axis', 'dtype', 'out', 'keepdims'),
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
    # "int a=None" -> "a"; the markers "*" and "/" are not parameters
    names = [p.split("=")[0].replace("\\", "").split()[-1] for p in _split_top(m.group(1))]
    return tuple(n for n in names if n not in ("self", "*", "/"))


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


def _format(title, table):
    """``table`` as source: names without parameters grouped first, then one entry a line."""
    out = [f"{title} = {{"]
    plain = sorted(n for n, v in table.items() if v is None)
    if plain:
        out.append(f"    **dict.fromkeys((  # {_PLAIN[title]}")
        out += [f"        {line}" for line in textwrap.wrap(", ".join(map(repr, plain)), 91)]
        out[-1] += ")),"
    for name in sorted(n for n in table if table[n] is not None):
        head = f"    {name!r}: ("
        out += textwrap.wrap(f"{head}{repr(table[name])[1:]},", 99,
                             subsequent_indent=" " * len(head))
    return out + ["}"]


_PLAIN = {"NDARRAY": "attributes, not methods", "FUNCTIONS": "ufuncs"}


def _generate():
    import cupy
    import numpy as np

    ndarray_names = [n for n in dir(cupy.ndarray) if not n.startswith("_")
                     and hasattr(np.ndarray, n)]
    generator_names = [n for n in dir(cupy.random.Generator) if not n.startswith("_")]
    tables = read_installed(cupy, ndarray_names, generator_names, list(FUNCTIONS))
    return "\n".join(line for title, table in zip(("NDARRAY", "GENERATOR", "FUNCTIONS"), tables)
                     for line in _format(title, table))


if __name__ == "__main__":
    print(_generate())
