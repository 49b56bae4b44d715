"""Write a benchmark's table into the README between its `<!-- name -->` and `<!-- /name -->` markers, so a
figure in the README is always the output of its recorded command, never typed by hand."""

from __future__ import annotations

import subprocess
from pathlib import Path


def head_commit() -> str:
    """The short commit the benchmark runs at, for the record beside its figures."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def write_block(readme: Path, name: str, text: str) -> None:
    """Replace what stands between the markers of `name` with text (the markers stay)."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{readme}: no {start} ... {end} markers; add them where the table goes")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")
