"""``python -m dynamics`` = the ``dynamics`` console script."""
import sys

from dynamics.cli import main

sys.exit(main())
