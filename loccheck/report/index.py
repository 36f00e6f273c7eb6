"""`index.md`: the pytest session's summary of every claim it verified."""
from __future__ import annotations

from loccheck.render.format import P_CONVENTION, fmt, table

INDEX_HEADERS = ["claim", "verdict", "expected", "p-value", "N", "claim gain",
                 "whole-model gain", "report"]


def render_index(rows: list[dict]) -> str:
    """`index.md`: one table row per claim, sorted by claim id, no timestamps.

    Each row has `claim`, `verdict`, `expected` and, unless the verdict is "ERROR",
    `p_value`, `n_null`, `claim_gain`, `ceiling_gain` and `report_link` (the report's path
    relative to index.md); an "ERROR" row has `error`, the one-line message.
    """
    rows_out, n_as_expected = [], 0
    for row in sorted(rows, key=lambda r: str(r["claim"])):
        as_expected = row.get("as_expected", row["verdict"] == row["expected"])
        n_as_expected += as_expected
        if row["verdict"] == "ERROR":
            cells = ["—"] * 4 + [str(row.get("error", "")).replace("|", "\\|")]
        else:
            cells = [fmt(row.get("p_value")), fmt(row.get("n_null")), fmt(row.get("claim_gain")),
                     fmt(row.get("ceiling_gain")), f"[report.md]({row['report_link']})"]
        verdict = row["verdict"] if as_expected else f"**{row['verdict']}**"
        rows_out.append([f"`{row['claim']}`", verdict, row["expected"], *cells])
    n = len(rows_out)
    return "\n".join([
        "# loccheck: claims", "",
        f"{n_as_expected} of {n} claim{'s' if n != 1 else ''} got the verdict they expect. "
        "A verdict in bold differs from the expected one.", "",
        table(rows_out, INDEX_HEADERS), "",
        f"{P_CONVENTION}. N is the number of random locations; gains are on held-out test "
        "questions, over the unedited model."]) + "\n"
