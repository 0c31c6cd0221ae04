"""Load testing: many real bidders against a real server, with checked invariants.

``python -m bidwar.loadtest --help`` for the command; :func:`run_load` and
:func:`check_run` for use from tests and scripts.
"""

from bidwar.loadtest.config import LoadConfig, parse_args
from bidwar.loadtest.invariants import Check, check_run
from bidwar.loadtest.runner import run_load

__all__ = ["Check", "LoadConfig", "check_run", "parse_args", "run_load"]
