"""`python -m stocksync` is the `stocksync` command."""

from stocksync.cli import main

raise SystemExit(main())
