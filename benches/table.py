"""The benchmarks' table: one column per contender, values and their ratio to the first."""


def print_table(contenders, results, rows, width, extra_rows=()):
    """`results[name][key]`; `rows`: (label, key, format); the first contender is the base.
    `extra_rows`: (label, [cell per contender]) printed as they are."""
    print("".ljust(24) + "".join(n.rjust(width) for n in contenders))
    for label, key, fmt in rows:
        base = results.get(contenders[0], {}).get(key)
        cells = []
        for name in contenders:
            value = results.get(name, {}).get(key)
            if value is None:
                cells.append("failed".rjust(width))
                continue
            cell = fmt(value)
            if name != contenders[0] and base:
                cell += f" ({value / base:.2f}×)"
            cells.append(cell.rjust(width))
        print(label.ljust(24) + "".join(cells))
    for label, cells in extra_rows:
        print(label.ljust(24) + "".join(str(c).rjust(width) for c in cells))
