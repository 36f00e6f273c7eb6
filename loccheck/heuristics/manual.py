"""`heuristic: {method: manual}`: the location is stated by hand (or by a paper); nothing runs."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from loccheck.heuristics import Heuristic, register_heuristic
from loccheck.schema import Section


class ManualHeuristicSection(Section):
    method: Literal["manual"] = Field("manual", description="The location is given by hand.")
    citation: str | None = Field(None, description="Where the localization claim was published.")
    notes: str | None = Field(None, description="Free-text notes.")


register_heuristic(Heuristic("manual", ManualHeuristicSection, kind=None))
