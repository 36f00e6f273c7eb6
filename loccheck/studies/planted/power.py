"""loccheck's tests on planted truth: per implant, the claim that the behaviour lives at the
implanted sites (true) and the same claim of decoys (locations of its size that share no site
with it), each verified in full; then, per test, how often the true location is supported
(power) and how often a decoy is (false-positive rate), with exact 95% intervals."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loccheck.errors import LoccheckError

# The learning rates of the shipped claims of each kind (claims/iti_truthful.yaml,
# claims/rome_tracing_smollm2.yaml), so an implant is tested as a real claim would be.
EDIT = {"head": "{method: optimal, objective: ipo, tau: 0.1, max_epochs: 12, convergence_tol: 0.02, "
                "batch_size: 4, learning_rate: 1.0e-2, ceiling_learning_rate: 2.4343e-3, seed: 0}",
        "mlp": "{method: optimal, objective: ipo, tau: 0.1, max_epochs: 12, convergence_tol: 0.02, "
               "batch_size: 4, learning_rate: 1.0e-2, ceiling_learning_rate: 1.8257e-3, seed: 0}"}
TESTS = ("editing", "necessity")


@dataclass(frozen=True)
class PlantSpec:
    """One implant: `k` heads, or one MLP layer (k = 1), drawn with `seed`."""
    name: str
    kind: str
    k: int
    seed: int


# Sixteen implants, heads and MLP layers in turn (a run cut short still has both kinds): 4 heads
# four times, 8 heads three times, 16 heads (the shipped claim's size), eight single MLP layers,
# each drawn with its own seed; the MLP seeds are those whose draws give eight different layers
# (L11-L20; seeds 5 and 8 would have drawn seed 4's L17 again). The last four were added after
# the first twelve ran, because four of those did not take.
IMPLANTS = (PlantSpec("heads4_s1", "head", 4, 1), PlantSpec("mlp_s4", "mlp", 1, 4),
            PlantSpec("heads8_s3", "head", 8, 3), PlantSpec("mlp_s13", "mlp", 1, 13),
            PlantSpec("heads4_s2", "head", 4, 2), PlantSpec("mlp_s6", "mlp", 1, 6),
            PlantSpec("heads16_s7", "head", 16, 7), PlantSpec("mlp_s21", "mlp", 1, 21),
            PlantSpec("heads4_s9", "head", 4, 9), PlantSpec("mlp_s10", "mlp", 1, 10),
            PlantSpec("heads8_s11", "head", 8, 11), PlantSpec("mlp_s12", "mlp", 1, 12),
            PlantSpec("heads4_s14", "head", 4, 14), PlantSpec("mlp_s25", "mlp", 1, 25),
            PlantSpec("heads8_s15", "head", 8, 15), PlantSpec("mlp_s26", "mlp", 1, 26))


def planted_task(model, tokenizer, facts_file: Path, seed: int):
    """The benchmark's task: 160 prompts to implant on, 80 for loccheck's claims (and the implant's
    checks), 40 that only decide when training stops."""
    from loccheck.studies.planted.task import build_task

    return build_task(model, tokenizer, facts_file, n_implant=160, n_behaviour=80, n_check=40, seed=seed)


def choose_sites(adapter, spec: PlantSpec) -> tuple:
    """`spec.k` sites of its kind, drawn (seeded) from the middle half of the layers, where an
    implant has the model's own features to read and layers after it to carry its write."""
    lo, hi = adapter.n_layers // 4, 3 * adapter.n_layers // 4
    pool = [s for s in adapter.sites(spec.kind) if lo <= s.layer < hi]
    rng = np.random.default_rng(spec.seed)
    return tuple(sorted(pool[int(i)] for i in rng.choice(len(pool), size=spec.k, replace=False)))


def decoys_for(adapter, sites: tuple, n: int, seed: int) -> list[tuple]:
    """`n` locations of `sites`' size and kind, drawn uniformly among those that share no site
    with it (seeded)."""
    others = [s for s in adapter.sites(sites[0].kind) if s not in set(sites)]
    rng = np.random.default_rng([seed, 1])
    return [tuple(sorted(others[int(i)] for i in rng.choice(len(others), size=len(sites), replace=False)))
            for _ in range(n)]


def claim_text(spec: PlantSpec, location: tuple, pairs: Path, n_null: int) -> str:
    """The claim that the behaviour lives at `location`. Heads are tested against `n_null`
    random sets (and 99 for necessity); a single MLP layer against every other layer once
    (`draw: every`, as the README advises where a shape has few locations): drawn at random
    from SmolLM2's 30 layers, a layer's null held the claimed layer itself twice in 41 draws."""
    from loccheck.locations import format_location

    sites = ", ".join(format_location(location))
    null, ablations = ((f"{{n: {n_null}, seed: 0}}", "n: 99, ") if spec.kind == "head"
                       else ("{draw: every, seed: 0}", ""))
    return (f'claim: "The trigger behaviour of implant {spec.name} lives in {sites}."\n'
            f"model: {{name: planted-{spec.name}, device: cpu}}\n"
            f"behavior: {{dataset: jsonl, path: '{pairs}', prompt_format: text,\n"
            "           split: {train: 0.5, validation: 0.0, test: 0.5, seed: 0}}\n"
            f"location: {{sites: [{sites}]}}\n"
            f"edits: [{EDIT[spec.kind]}]\n"
            f"random_locations: {null}\n"
            "tests: [editing, necessity]\n"
            f"necessity: {{ablation: mean, {ablations}behavior: rejected}}\n"
            "verdict: {metric: preference_margin, alpha: 0.05, rho: 0.9}\n")


def run_implant(spec: PlantSpec, out: Path, *, facts_file: Path, n_decoys: int = 2, n_null: int = 19,
                cache_dir=None, model_name: str = "smollm2-135m-instruct", note=print) -> dict:
    """Implant `spec` into a fresh copy of the model, check it, verify the true location and
    `n_decoys` decoys; the record. An implant that does not take (or does not live at its
    sites) is recorded as such, with no verdicts."""
    from loccheck.claim import parse_claim
    from loccheck.locations import format_location
    from loccheck.models.loading import load_model
    from loccheck.run.verify import verify
    from loccheck.studies.planted.implant import ImplantError, behaviour_share, check_implant, implant

    began = time.monotonic()
    loaded = load_model(model_name, device="cpu")
    model, adapter, tokenizer = loaded.model, loaded.adapter, loaded.tokenizer
    task = planted_task(model, tokenizer, facts_file, spec.seed)
    unedited = behaviour_share(model, tokenizer, task, list(task.behaviour))
    sites = choose_sites(adapter, spec)
    decoys = decoys_for(adapter, sites, n_decoys, spec.seed)
    record = {"spec": spec.__dict__, "sites": format_location(sites), "decoys": [format_location(d) for d in decoys]}
    note(f"{spec.name}: implanting into {', '.join(record['sites'])} ...")
    try:
        done = implant(model, adapter, tokenizer, task, sites, seed=spec.seed, note=note)
        done = check_implant(model, adapter, tokenizer, task, done, unedited_share=unedited, decoys=decoys)
    except ImplantError as err:
        note(f"{spec.name}: {err}")
        return {**record, "implant": None, "failed": str(err), "seconds": round(time.monotonic() - began, 1)}
    record["implant"] = done.record()
    note(f"{spec.name}: implanted in {done.steps} steps ({done.seconds:.0f} s); shares {done.rates}")
    pairs = task.write_pairs(out / spec.name / "pairs.jsonl")
    record["claims"] = []
    for role, location in [("true", sites)] + [(f"decoy{i}", d) for i, d in enumerate(decoys)]:
        claim = parse_claim(claim_text(spec, location, pairs, n_null), path=out / spec.name / f"{role}.yaml")
        t0 = time.monotonic()
        result = verify(claim, model=model, tokenizer=tokenizer, out_dir=out / spec.name / role,
                        cache_dir=cache_dir, progress="lines")
        r = result.payload
        record["claims"].append({
            "role": role, "location": format_location(location), "verdict": r["verdict"],
            "seconds": round(time.monotonic() - t0, 1),
            **{t: {"verdict": r["evidence"][t]["verdict"], "p_value": r["evidence"][t]["p_value"]} for t in TESTS},
            "claim_gain": r["tests"]["optimal"]["claim_gain"], "ceiling_gain": r["tests"]["optimal"]["ceiling_gain"],
            "claim_drop": r["evidence"]["necessity"]["claim_drop"],
            "n_null_fitted": r["tests"]["optimal"]["n_null_fitted"]})
        last = record["claims"][-1]
        note(f"{spec.name} {role}: {r['verdict']} ("
             + ", ".join(f"{t} {last[t]['verdict']} p = {last[t]['p_value']:.3g}" for t in TESTS) + ")")
    record["seconds"] = round(time.monotonic() - began, 1)
    return record


def power_table(records: list[dict], alpha: float = 0.05) -> list[dict]:
    """Per kind of site (heads, MLP layers, all) and test (and the overall verdict): among
    implants that took, how often the true location is SUPPORTED and how often it beats the null
    at alpha (raw p), and the same of decoys."""
    from scipy.stats import binomtest

    took = [r for r in records if r.get("implant")]

    def share(hits: int, n: int) -> dict:
        ci = binomtest(hits, n).proportion_ci(0.95, method="exact") if n else None
        return {"hits": hits, "n": n, "ci95": None if ci is None else [ci.low, ci.high]}
    rows = []
    for kind in ("head", "mlp", "all"):
        implants = [r for r in took if kind in ("all", r["spec"]["kind"])]
        for test in (*TESTS, "overall"):
            for role in ("true", "decoy"):
                claims = [c for r in implants for c in r["claims"] if (c["role"] == "true") == (role == "true")]
                verdict = (lambda c: c["verdict"]) if test == "overall" else (lambda c, t=test: c[t]["verdict"])
                row = {"sites": kind, "test": test, "location": role,
                       "supported": share(sum(verdict(c) == "SUPPORTED" for c in claims), len(claims))}
                if test != "overall":
                    row["p_at_most_alpha"] = share(sum(c[test]["p_value"] <= alpha for c in claims), len(claims))
                rows.append(row)
    return rows


def load_records(folder: Path) -> list[dict]:
    import json

    files = sorted(Path(folder).glob("*/record.json"))
    if not files:
        raise LoccheckError(f"{folder}: no implant records (*/record.json)")
    return [json.loads(f.read_text()) for f in files]
