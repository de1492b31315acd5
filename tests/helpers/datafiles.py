"""A user's data files and run configs: CSV rows written exactly, labelled data, a config."""

from __future__ import annotations

import numpy as np


def write_rows(path, rows, header=None, bom=False):
    """A CSV of ``rows`` (floats written exactly with repr), optional header and BOM."""
    lines = ([",".join(header)] if header else []) + [
        ",".join(repr(float(v)) for v in row) for row in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def labelled(rng, n=24, d=2):
    """X (n, d) float and 0/1 labels, both classes at least twice."""
    X = rng.normal(size=(n, d))
    y = np.arange(n) % 2
    rng.shuffle(y)
    return X, y


def write_config(path, dataset, out, data="", epochs=1, optimizer="", schedule="", output="",
                 hidden=8, batch_size=8):
    path.write_text(f"""
[data]
dataset = "{dataset}"
test_size = 0.25
{data}
[model]
hidden = [{hidden}]
[optimizer]
lr = 0.05
{optimizer}
[schedule]
{schedule}
[train]
epochs = {epochs}
batch_size = {batch_size}
device = "cpu"
progress = false
[output]
dir = "{out}"
{output}
""")
    return path
