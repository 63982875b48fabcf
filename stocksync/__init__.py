"""The `stocksync` command line: migrate, run, status and the Market sandbox."""
