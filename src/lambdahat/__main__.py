"""``python -m lambdahat``: the same command line as ``lambdahat``."""

import sys

from .cli import main

sys.exit(main())
