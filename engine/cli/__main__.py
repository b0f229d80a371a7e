"""`python -m engine.cli`: the same commands as the `rowrank` script."""

import sys

from engine.cli import main

sys.exit(main())
