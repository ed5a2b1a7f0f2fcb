"""`python -m bridge_db`: the same as the bridge-db console script."""

from .cli import run

run()
