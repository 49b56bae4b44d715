"""Write a benchmark's table into the README between its `<!-- name -->` and `<!-- /name -->` markers, so a
figure in the README is always the output of its recorded command, never typed by hand."""

from __future__ import annotations

from pathlib import Path


def write_block(readme: Path, name: str, text: str) -> None:
    """Replace what stands between the markers of `name` with text (the markers stay)."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{readme}: no {start} ... {end} markers; add them where the table goes")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")
