"""Layers, the MLP, the activation table and initialisers."""

from devnet.nn.activations import ACTIVATIONS
from devnet.nn.dense import Dense, Parameter, ParameterList
from devnet.nn.init import INITIALIZERS
from devnet.nn.mlp import MLP

__all__ = ["ACTIVATIONS", "INITIALIZERS", "MLP", "Dense", "Parameter", "ParameterList"]
