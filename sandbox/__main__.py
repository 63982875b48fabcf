"""`python -m sandbox`: the same as `stocksync sandbox`."""

import sys

from sandbox.server import main

sys.exit(main())
