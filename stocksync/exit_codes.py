"""The exit codes every `stocksync` command keeps: 0 ok, 2 needs attention, 3 cannot check,
64 usage or bad configuration (README "Exit codes").

- 0: done, and nothing needs a person.
- 2: done as far as it could be, and something needs a person: a campaign parked or too old
  (`status`), drift found (`verify`, CONTRACT.md 5), settings that differ from the Market
  (`discover`), lines or SKUs refused (`import`, `resync`), messages not replayed (`replay`),
  the demo's Market not right (`demo`).
- 3: could not check or do it: the database or the Market cannot be reached, the database is
  not migrated, a campaign could not be read through.
- 64 (EX_USAGE of sysexits.h): a bad option, argument, file or setting; nothing was done.
- 130: interrupted (Ctrl-C). 1 stays for what none of these covers: an unexpected error.
"""

from __future__ import annotations

OK = 0
ATTENTION = 2
CANNOT_CHECK = 3
USAGE = 64
INTERRUPTED = 130
