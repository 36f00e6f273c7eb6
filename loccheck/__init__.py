"""loccheck: put interpretability localization claims on trial.

    import loccheck
    result = loccheck.verify("claims/iti_truthful.yaml")
    result.verdict, result.p_value, result.optimality_ratio

Importing the package is cheap; torch and transformers load when a claim is verified.
"""
__version__ = "0.1.0"

__all__ = ["HeadLoc", "Verdict", "VerifyResult", "load_claim", "localize", "verify", "__version__"]

_LAZY = {"verify": "loccheck.run.verify", "localize": "loccheck.run.verify", "VerifyResult": "loccheck.run.result",
         "load_claim": "loccheck.claim", "Verdict": "loccheck.stats.verdict", "HeadLoc": "loccheck.locations"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loccheck' has no attribute {name!r}")
