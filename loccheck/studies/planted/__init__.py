"""Planted truth: a behaviour implanted into a real model by training only chosen sites, so
where it lives is known, then each of loccheck's tests run on that location and on decoys of
its size (issue 27). `task` builds the behaviour, `implant` trains it in and checks that it
lives there, `power` runs the tests and counts how often each supports the truth and a decoy.
The command: `python benchmarks/planted_power.py` (README, "How far a verdict can be trusted")."""
