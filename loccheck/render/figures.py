"""The figures' common style and their deterministic writing.

Rendering is deterministic: the default style (a user's matplotlibrc cannot leak in), a fixed
dpi, and no "Software" PNG chunk, so the same input gives byte-identical PNGs and reruns give
clean diffs. Files are written atomically (temp file in the same folder, then os.replace).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")  # headless and deterministic; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402,F401  (the sections draw with it)
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402,F401

from loccheck.files import write_bytes_atomic  # noqa: E402

DPI = 120
FIGSIZE = (7.0, 4.2)
CLAIM_COLOR = "tab:red"
FULL_COLOR = "black"
NULL_COLOR = "0.6"
RC = {"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 9, "figure.dpi": DPI}


def finite_values(values: Iterable) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return a[np.isfinite(a)]


def is_finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def legend_below(fig) -> None:
    # Below the axes, so it never hides a marked gain or a curve.
    # One entry per row: three long labels side by side run off a 7-inch figure.
    fig.legend(loc="outside lower center", ncols=1, frameon=False)


def save_figure(fig, path) -> Path:
    """Render `fig` to PNG bytes, close it, and write the bytes atomically."""
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    finally:
        plt.close(fig)  # many claims in one pytest session would otherwise leak figures
    return write_bytes_atomic(buf.getvalue(), path)
