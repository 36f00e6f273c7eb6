"""The claim file: its YAML read with every value's position, its sections validated, and errors that point
at file:line:col. Each edit method and heuristic declares its own section beside its code; this
folder assembles them. Torch-free: the pytest plugin imports it in every session."""
from loccheck.claim.load import load_claim, parse_claim  # noqa: F401
from loccheck.claim.model import Claim, claim_json_schema  # noqa: F401
