"""Measured tables in the docs: a benchmark writes its table between two markers, so the command beside a
table is the one that wrote it."""

from pathlib import Path


def update_section(path: Path, name: str, text: str) -> None:
    """Replace what lies between `<!-- NAME: begin -->` and `<!-- NAME: end -->` in `path` by `text`."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    document = path.read_text()
    if begin not in document or end not in document:
        raise SystemExit(f"{path}: no {begin} ... {end} section to update")
    head, rest = document.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{rest.split(end, 1)[1]}")
