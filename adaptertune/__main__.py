"""`python -m adaptertune ...` (and `torchrun ... -m adaptertune train ...`): the command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
