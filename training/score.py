"""``python -m training.score``: the batch scorer's command line, kept at its documented name.

The scorer itself is :mod:`training.serving.score`.
"""

import sys

from .serving.score import main

if __name__ == "__main__":
    sys.exit(main())
