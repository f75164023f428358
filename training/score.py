"""``python -m training.score``: the batch scorer's command line, kept at its documented name.

The scorer itself is :mod:`training.serving.batch`.
"""

import sys

from .serving.batch import main

if __name__ == "__main__":
    sys.exit(main())
