"""Building blocks of the claim schema (pydantic, torch-free): the frozen section base, number
types, and validation errors that can point at one item. Each edit method and heuristic
declares its own claim section with these, next to its code; `loccheck.claim` assembles them."""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Strict, WithJsonSchema
from pydantic_core import PydanticCustomError

FLOAT32_MAX = 3.4028234663852886e38    # numpy.finfo(numpy.float32).max
FLOAT32_TINY = 1.1754943508222875e-38  # its smallest normal number
SEED_MAX = 2**32 - 1


def _float32(value: float) -> float:
    # Rates, strengths and scales meet float32 tensors: 1e39 would overflow there, 1e-39 vanish.
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"{value:g} is beyond float32's range (at most {FLOAT32_MAX:.4g} in "
                         "magnitude); loccheck computes in float32")
    if value != 0 and abs(value) < FLOAT32_TINY:
        raise ValueError(f"{value:g} is too small for float32 (it would compute as 0 or lose "
                         f"precision; the smallest normal float32 is {FLOAT32_TINY:.4g})")
    return value


def _seed(value: int) -> int:
    # sklearn's random_state (the probe) and numpy's legacy seeding take 32-bit seeds only
    if not 0 <= value <= SEED_MAX:
        shown = str(value) if abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"
        raise ValueError(f"a seed must be a whole number from 0 to 2**32 - 1 = {SEED_MAX}, got {shown}")
    return value


# Accepts YAML ints, rejects bools and strings ("0.1"), inf and nan, and floats float32 lacks.
Number = Annotated[float, Strict(), AllowInfNan(False), AfterValidator(_float32)]
# A seed every random generator loccheck seeds accepts; rejects bools, floats and strings.
Seed = Annotated[int, Strict(), AfterValidator(_seed),
                 WithJsonSchema({"type": "integer", "minimum": 0, "maximum": SEED_MAX})]


def fail(msg: str, at: tuple = ()) -> PydanticCustomError:
    """A validation error whose ctx['at'] extends the loc pydantic gives (so it can name an item)."""
    return PydanticCustomError("claim", msg, {"at": at})  # only ctx names in {} are substituted


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
