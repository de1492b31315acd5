"""The version of devnet (the devnet-mlp distribution); pyproject.toml holds the same."""

__version__ = "0.1.0"
