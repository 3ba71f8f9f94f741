#!/usr/bin/env python3
"""Prints the tables of two ensync-bench JSON reports (the work tree's and a base
commit's, from `scripts/bench.sh --compare`) as one: every numeric cell becomes
`now (base, now/base)`. Rows are matched by their leading non-numeric cells
(scenario, adapter, ...); a row or table only one side has is printed as it is.

usage: bench_compare.py NOW.json BASE.json
"""
import json
import re
import sys

NUMBER = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)\s*([^\s(]*)")


def sections(path):
    with open(path) as f:
        doc = json.load(f)
    return doc["sections"] if isinstance(doc, dict) else doc


def number(cell):
    m = NUMBER.match(cell or "")
    return (float(m.group(1)), m.group(2)) if m else None


def key(row):
    lead = []
    for cell in row:
        if number(cell) is not None:
            break
        lead.append(cell)
    return tuple(lead) or tuple(row[:1])


def merge(now, base):
    n, b = number(now), number(base)
    if n is None or b is None or n[1] != b[1]:
        return now if now == base else f"{now} (base {base})"
    ratio = f"{n[0] / b[0]:.2f}" if b[0] else "-"
    return f"{now} (base {base}, {ratio})"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    now, base = sections(sys.argv[1]), sections(sys.argv[2])
    base_by_title = {s["title"]: s for s in base}
    for s in now:
        b = base_by_title.get(s["title"])
        base_rows = {key(r): r for r in (b["rows"] if b else [])}
        print(f"### {s['title']}" + ("" if b else " (no base numbers)"))
        print()
        print("| " + " | ".join(s["columns"]) + " |")
        print("|" + "---|" * len(s["columns"]))
        for row in s["rows"]:
            other = base_rows.get(key(row))
            cells = row if other is None else [
                merge(c, other[i] if i < len(other) else "") for i, c in enumerate(row)
            ]
            print("| " + " | ".join(cells) + " |")
        for note in s.get("notes", []):
            print()
            print(note)
        print()


if __name__ == "__main__":
    main()
