"""Prompts filled in from a row's columns: `"Does this image show a {label}?"`.

Python `str.format` names, nothing more: `{column}` is replaced by the row's value of that
column (as text: strings as they are, other values as JSON), `{{` and `}}` are literal
braces. Positional fields (`{}`, `{0}`), attribute or index access (`{a.b}`, `{a[0]}`),
conversions and format specs are refused when the config is loaded: they would read
more of a row than its value, or fail per row. A row whose value is missing or null
can't be asked: `fill` raises `MissingValue` naming the column (the row's status for that
task is then invalid_row). The value is inserted as it is: braces in it are not parsed.
"""

from __future__ import annotations

import string


class MissingValue(ValueError):
    """A column the template names has no value in this row."""


def _parse(template: str) -> list[tuple[str, str | None]]:
    """(literal text, field name or None) pieces; ValueError for what a template may not hold."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(str(e)) from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if not name.strip() or name.isdigit():
                raise ValueError("a field must name a column, e.g. {label}: {} and {0} name none")
            if any(c in name for c in ".[]"):
                raise ValueError(f"{{{name}}}: only plain column names, no attribute or index access")
            if spec or conversion:
                raise ValueError(f"{{{name}...}}: no conversions or format specs, only {{{name.split('!')[0]}}}")
        pieces.append((literal, name))
    return pieces


def template_fields(template: str) -> tuple[str, ...]:
    """The columns a template names, in order of first use; () for a fixed prompt."""
    return tuple(dict.fromkeys(name for _, name in _parse(template) if name is not None))


def fill(template: str, values: dict[str, str | None]) -> str:
    out = []
    for literal, name in _parse(template):
        out.append(literal)
        if name is not None:
            value = values.get(name)
            if value is None:
                raise MissingValue(f"the prompt names column {name!r}, which this row has no value for")
            out.append(value)
    return "".join(out)
