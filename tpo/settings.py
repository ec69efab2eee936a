"""Types with a range for settings read from a config or the command line.

LightningCLI (jsonargparse) checks them while parsing, so ``--model.beta -1`` stops with one
message naming the key, before any model or data is loaded. The values stay plain ``float`` /
``int``.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Interval

Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
Fraction = Annotated[float, Interval(ge=0, le=1)]
PositiveInt = Annotated[int, Gt(0)]
NonNegativeInt = Annotated[int, Ge(0)]
