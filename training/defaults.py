"""Names and defaults the library and its command lines share, in a module that imports nothing heavy.

The command lines build their parsers (and ``--help``) from these without
loading pandas, Numba or LightGBM; the modules that use them import them
from here.
"""

from __future__ import annotations

__all__ = ["AUTO_WORKERS_FROM_ROWS", "FIT_STRATEGIES", "MAX_AUTO_WORKERS", "MIN_FULLY_LOGGED", "OPTIONAL_COLUMNS",
           "REQUIRED_COLUMNS"]

#: Columns every long-format table has (``training.data.read_table``).
REQUIRED_COLUMNS = ("query_id", "model", "quality", "cost_usd")
#: Optional columns of the long format (besides signal columns named by ``signal_columns``).
OPTIONAL_COLUMNS = ("prompt", "task", "subtask", "split", "response", "input_tokens", "output_tokens", "propensity",
                    "latency_s")
#: Fully logged calibration queries enough to fit policies on them alone
#: (``--min-fully-logged``). At 200 the standard error of a policy's mean
#: quality is at most 0.5/√200 ≈ 0.035, the size of the gaps between
#: strategies; below it the direct method's estimator bias is the smaller risk.
MIN_FULLY_LOGGED = 200
#: Strategies ``training.fit --strategy`` can save a router for.
FIT_STRATEGIES = ("cascade_routing", "cascade", "routing", "threshold")
#: ``training.score --workers`` default: from this many input rows, one process per core (the ~3 s to start
#: them and load the router pay off); below, one process with single-threaded kernels, which
#: need no compiling (multi-threaded ones are compiled at start, ~6 s).
AUTO_WORKERS_FROM_ROWS = 500_000
#: At most this many processes by default: each holds the router (and a batch) in memory.
MAX_AUTO_WORKERS = 8
