"""`python -m benchmarks.transfer`: the transfer benchmark (see `benchmarks/transfer/run.py`)."""

import sys

from unitrans_ds.engine.distributed import shutdown_distributed

from .run import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:  # after the last collective, on success, error and stop alike
        shutdown_distributed()
