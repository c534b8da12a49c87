"""Kubernetes resource quantities (``256Mi``, ``0.5``, ``500m``) as service definitions carry them.

The syntax is apimachinery's ``resource.Quantity``. Kubernetes itself caps a quantity at 2^63-1 and refuses
negative limits in a pod; a value past those (``-1Gi``, ``1e30``) or a limit no job could run with (zero
memory, a cpu beyond any machine) is refused at service create and update, naming the field, instead of
becoming a job no cgroup or pod can take.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Final

from oscar_manager.errors import BadRequest

# number, then a decimal exponent or a suffix.
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:[eE]([+-]?\d+)|([KMGTPE]i|[numkMGTPE]))?$")
_SUFFIXES: Final = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
# The largest quantity Kubernetes represents (an int64), and so the largest byte count a limit can hold.
MAX_QUANTITY: Final = Decimal(2**63 - 1)
# No machine a job runs on has more; a larger cpu is a typo or an attack on the CFS quota arithmetic.
MAX_CPU_CORES: Final = Decimal(1024)
_EXAMPLES: Final = "e.g. 256Mi, 0.5, 500m"


def parse_quantity(text: str) -> Decimal | None:
    """The exact value of a quantity; None when ``text`` is not one."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        return None
    number, exponent, suffix = match.group(1), match.group(2), match.group(3) or ""
    try:
        if exponent is not None:
            power = int(exponent)
            # Beyond these the value is 0 or far past MAX_QUANTITY anyway; Decimal need not build it.
            if not -64 <= power <= 64:
                return Decimal(0) if power < 0 or Decimal(number) == 0 else Decimal("Infinity")
            return Decimal(number).scaleb(power)
        return Decimal(number) * _SUFFIXES[suffix]
    except InvalidOperation:
        return None


def check_quantity(field: str, value: str, *, positive: bool = False, upper: Decimal = MAX_QUANTITY) -> None:
    """400 naming ``field`` unless ``value`` is empty or a quantity in [0, upper] (or (0, upper])."""
    if not value:
        return
    amount = parse_quantity(value)
    if amount is None:
        raise BadRequest(f"invalid {field} {value!r}: not a Kubernetes resource quantity ({_EXAMPLES})")
    if amount < 0 or (positive and amount == 0):
        raise BadRequest(f"invalid {field} {value!r}: must be {'more than' if positive else 'at least'} 0")
    if amount > upper:
        raise BadRequest(f"invalid {field} {value!r}: must be at most {upper:f}")


def check_memory(field: str, value: str) -> None:
    check_quantity(field, value, positive=True)


def check_cpu(field: str, value: str) -> None:
    check_quantity(field, value, positive=True, upper=MAX_CPU_CORES)


def quantity_bytes(quantity: str) -> int | None:
    """A memory quantity in bytes, rounded up (``256Mi`` -> 268435456); None when empty, not understood
    or out of range (only definitions stored before the checks above can be)."""
    amount = parse_quantity(quantity)
    if amount is None or not 0 <= amount <= MAX_QUANTITY:
        return None
    return math.ceil(amount)


def quantity_cores(quantity: str) -> float | None:
    """A cpu quantity in cores (``500m`` -> 0.5); None when empty, not understood or out of range."""
    amount = parse_quantity(quantity)
    if amount is None or not 0 < amount <= MAX_CPU_CORES:
        return None
    return float(amount)
