"""The activation table: which activations exist and what their kernels need."""

from __future__ import annotations

from dataclasses import dataclass

from devnet.errors import ConfigError, lookup
from devnet.kernels import table


@dataclass(frozen=True)
class Activation:
    """What the model must know about an activation; its math lives in ``kernels``."""

    name: str
    needs_preactivation: bool  # keep Z in forward (derivative not recoverable from the output)
    output_only: bool  # row-wise (softmax): only allowed on the last layer


ACTIVATIONS = {
    name: Activation(name, name in table.NEEDS_PREACTIVATION, name in table.ROWWISE)
    for name in table.ACTIVATION_NAMES
}
HIDDEN_ACTIVATIONS = tuple(n for n, a in ACTIVATIONS.items() if not a.output_only)


def get(name: str, *, hidden: bool = False) -> Activation:
    """The Activation called ``name``; ``hidden=True`` rejects output-only ones."""
    act = lookup(ACTIVATIONS, name, "activation")
    if hidden and act.output_only:
        raise ConfigError(f"activation {name!r} is only valid as output_activation; "
                          f"valid hidden activations: {', '.join(sorted(HIDDEN_ACTIVATIONS))}")
    return act
