"""The hand-written progress bar of `stocksync import`."""

from __future__ import annotations

import io

from stocksync.commands.import_snapshot import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_it_prints_a_line_per_tenth() -> None:
    stream = io.StringIO()
    progress = Progress(stream, "importing s.csv", 1000)

    for done in range(0, 1001, 50):
        progress.update(done, done // 10)
    progress.update(1000, 100, final=True)

    lines = stream.getvalue().splitlines()
    assert lines[0] == "importing s.csv: 0% (0 lines)"
    assert lines[-1] == "importing s.csv: 100% (100 lines)"
    assert len(lines) == 11


def test_on_a_terminal_it_redraws_one_line_and_ends_it() -> None:
    stream = Terminal()
    progress = Progress(stream, "importing s.csv", 200)

    progress.update(100, 5_000)
    progress.update(200, 10_000, final=True)

    out = stream.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n")
    assert out.split("\r")[1] == "importing s.csv [" + "#" * 15 + "." * 15 + "]  50% 5,000 lines"
    assert out.split("\r")[2].startswith("importing s.csv [" + "#" * 30 + "] 100% 10,000 lines")


def test_an_empty_file_is_complete() -> None:
    stream = io.StringIO()

    Progress(stream, "importing e.csv", 0).update(0, 0, final=True)

    assert stream.getvalue() == "importing e.csv: 100% (0 lines)\n"
