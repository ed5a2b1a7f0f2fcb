"""OmniNode Bridge database operations: migrations, verification and the embedded dev database."""

__version__ = "0.1.0"
