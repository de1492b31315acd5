"""Checkpoints: safetensors tensors + one JSON metadata entry; atomic writes, verified reads.

File layout (a plain safetensors file, readable by any safetensors reader):

- tensors ``params`` (the model's flat parameter buffer) and ``optimizer.<name>`` (each
  optimizer state buffer), all 1-D in the model's dtype; ``input.mean`` and ``input.scale``
  (float64, (n_in,)) when the model standardizes its inputs (format version 2 on);
- ``__metadata__`` with two string entries: ``devnet`` (JSON: format name and version, the
  model's config, the optimizer's kind, hyper-parameters, schedule and step count, the History,
  the training state for exact resume: epoch, global step, shuffle RNG state, and the sha256 of
  every tensor's bytes, ``extra``: the caller's JSON dict) and ``devnet_sha256`` (the sha256
  of that JSON text).

Reading (``verify``) parses JSON only (never pickle) and checks every byte and field before
any model is built; writing (``files``) is atomic: a crash leaves the old file or the new one,
concurrent saves each land whole. Every failure is a CheckpointError saying what is wrong.

Format versions read: 1 (no input scaling, no ``extra``), 2 (no deep-network options) and 3
(the model config records ``block``, ``norm``, ``dropout`` and ``dropout_seed``; LayerNorm's
gamma and beta are in ``params``); a config without those keys is a plain MLP.
"""

from devnet.io.checkpoint import (
    Checkpoint,
    check_saveable,
    load,
    load_checkpoint,
    read_metadata,
    save,
)
from devnet.io.files import atomic_write, check_save_path
from devnet.io.verify import FORMAT, FORMAT_VERSION, check_architecture, check_loss

__all__ = ["Checkpoint", "check_saveable", "load", "load_checkpoint", "read_metadata", "save",
           "atomic_write", "check_save_path", "FORMAT", "FORMAT_VERSION", "check_architecture",
           "check_loss"]
