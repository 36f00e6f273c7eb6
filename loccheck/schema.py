"""Building blocks of the claim schema (pydantic, torch-free): the frozen section base, number
types, and validation errors that can point at one item. Each edit method and heuristic
declares its own claim section with these, next to its code; `loccheck.claim` assembles them."""
from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, BaseModel, ConfigDict, Strict
from pydantic_core import PydanticCustomError

# Accepts YAML ints, rejects bools and strings ("0.1"), inf and nan.
Number = Annotated[float, Strict(), AllowInfNan(False)]


def fail(msg: str, at: tuple = ()) -> PydanticCustomError:
    """A validation error whose ctx['at'] extends the loc pydantic gives (so it can name an item)."""
    return PydanticCustomError("claim", msg, {"at": at})  # only ctx names in {} are substituted


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
