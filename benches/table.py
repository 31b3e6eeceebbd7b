"""The benchmarks' table: one column per contender, values and their ratio to the first."""


def print_table(contenders, results, rows, width, extra_rows=(), ratios=None):
    """`results[name][key]`; `rows`: (label, key, format); the first contender is the base.
    `extra_rows`: (label, [cell per contender]) printed as they are. `ratios[name][key]`,
    when given, is the ratio shown (say, the median of per-round ratios) instead of the
    ratio of the two values."""
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
            if name != contenders[0] and ratios is not None:
                cell += f" ({ratios[name][key]:.2f}×)"
            elif name != contenders[0] and base:
                cell += f" ({value / base:.2f}×)"
            cells.append(cell.rjust(width))
        print(label.ljust(24) + "".join(cells))
    for label, cells in extra_rows:
        print(label.ljust(24) + "".join(str(c).rjust(width) for c in cells))
