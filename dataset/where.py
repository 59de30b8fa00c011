"""``--where`` filters for listing samples: ``FIELD OP VALUE``, e.g. ``num_shots>=3``.

Operators: ``=`` (or ``==``), ``!=``, ``<``, ``<=``, ``>``, ``>=``. A value compares as a
number when the row's field is numeric, else as text; a row whose field is missing (``None``)
matches nothing except ``FIELD=none``. Several conditions must all hold.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

_OPERATORS: dict[str, Callable[[object, object], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    """One parsed ``FIELD OP VALUE`` condition."""

    field: str
    op: str
    value: str

    def matches(self, row: dict) -> bool:
        """Whether ``row`` satisfies the condition.

        Raises:
            ValueError: a numeric field compared with a value that is not a number.
        """
        have = row.get(self.field)
        if have is None:
            return self.op in ("=", "==") and self.value.lower() == "none"
        if isinstance(have, bool):
            want: object = self.value.lower() in ("1", "true", "yes")
        elif isinstance(have, (int, float)):
            try:
                want = float(self.value)
            except ValueError:
                raise ValueError(f"{self.field} is numeric; {self.value!r} is not a number") from None
        else:
            want = self.value
        return _OPERATORS[self.op](have, want)


def parse_where(expression: str, fields: Iterable[str]) -> Condition:
    """Parse ``FIELD OP VALUE``; ``fields`` are the names a row has.

    Raises:
        ValueError: malformed expression or unknown field (the message lists the fields).
    """
    match = _CONDITION.match(expression)
    if not match:
        raise ValueError(f"--where {expression!r}: expected FIELD OP VALUE with OP one of {', '.join(_OPERATORS)}")
    name, op, value = match.groups()
    fields = list(fields)
    if name not in fields:
        raise ValueError(f"--where {expression!r}: unknown field {name!r}; fields: {', '.join(fields)}")
    return Condition(name, op, value)


def select(rows: Iterable[dict], conditions: list[Condition]) -> Iterator[dict]:
    """Rows satisfying every condition, in their order (lazily)."""
    return (row for row in rows if all(c.matches(row) for c in conditions))
