"""Terminal output shared by the commands: one aligned text table."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["text_table"]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Collection[int] = ()) -> str:
    """Columns padded to their widest cell, a rule under the header; the columns in ``right`` right-aligned.

    >>> print(text_table(["name", "params"], [["resnet20", "269,722"]], right={1}))
    name       params
    --------  -------
    resnet20  269,722
    """
    cells = [[str(cell) for cell in headers], *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
