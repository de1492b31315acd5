"""Optimizers over flat parameter buffers, and learning-rate schedules."""

from devnet.optim import schedules
from devnet.optim.optimizers import (
    OPTIMIZERS,
    SGD,
    Adam,
    AdamW,
    Optimizer,
    RMSProp,
    from_state_dict,
    get,
)

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer", "RMSProp", "from_state_dict",
           "get", "schedules"]
