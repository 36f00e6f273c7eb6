"""Claim files: schema, defaults, overrides, and errors that point at file:line:col."""
from __future__ import annotations

import codecs
import json
import os
import time
from pathlib import Path

import pytest

import loccheck.claim.load as claim_module
import loccheck.claim.yaml_positions as claim_yaml
from loccheck.claim import Claim, claim_json_schema, load_claim, parse_claim
from loccheck.errors import ClaimError, printable
from loccheck.locations import HeadLoc

MINIMAL = "claim: Heads carry truthfulness.\nlocation: {sites: [L0H1]}\n"

FULL = """\
claim: Truthfulness lives in two heads of layer 12.
model:
  name: smollm2-135m-instruct
  revision: "main"
  device: cuda:0
  dtype: bfloat16
  trust_remote_code: false
behavior:
  dataset: jsonl
  path: data/pairs.jsonl
  prompt_format: chat
  system_prompt: Answer truthfully.
  max_questions: 50
  max_pairs_per_question: 3
  split: {train: 0.5, validation: 0.25, test: 0.25, seed: 7}
location:
  sites: [L12H3, L1H0]
heuristic:
  method: probe
  citation: Li et al. 2023
  top_k: 2
  probe_accuracies: {L12H3: 0.83, L1H0: 0.71}
edits:
  - method: optimal
    objective: ipo
    tau: 0.2
    beta: 1
    max_epochs: 3
    batch_size: 8
    learning_rate: 1e-3
    ceiling_learning_rate: 2.5e-4
    weight_decay: 0.01
    warmup_ratio: 0.1
    init_std: 0.02
    read: location
    seed: 3
    convergence_tol: 0.01
  - method: iti
    alphas: [0, 5]
metrics: [preference_accuracy]
random_locations: {n: 20, match_layers: true, seed: 5}
verdict: {metric: preference_accuracy, alpha: 0.1, rho: 0.8}
expect: SUPPORTED
"""


def write(tmp_path, text: str | bytes, name: str = "claim.yaml"):
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def load_error(tmp_path, text: str | bytes) -> tuple[str, str]:
    path = write(tmp_path, text)
    with pytest.raises(ClaimError) as info:
        load_claim(path)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and "https://" not in message
    return message, str(path)


# --- valid claims -------------------------------------------------------------------------------

def test_full_claim_round_trips(tmp_path):
    claim = load_claim(write(tmp_path, FULL, "truthful_heads.yaml"))
    assert claim.name == "truthful_heads"
    assert claim.path == tmp_path / "truthful_heads.yaml"
    assert claim.model.device == "cuda:0" and claim.model.revision == "main"
    assert claim.behavior.split.seed == 7 and claim.behavior.max_pairs_per_question == 3
    assert claim.location.sites == ("L12H3", "L1H0")
    assert claim.location.parsed == (HeadLoc(1, 0), HeadLoc(12, 3))  # sorted
    assert claim.heuristic.probe_accuracies == {"L12H3": 0.83, "L1H0": 0.71}
    # YAML 1.1 reads `1e-3` as a string; the loader reads it as a float, as YAML 1.2 does.
    assert claim.edits[0].learning_rate == 1e-3 and claim.edits[0].ceiling_learning_rate == 2.5e-4
    assert claim.edits[0].beta == 1.0 and isinstance(claim.edits[0].beta, float)
    assert claim.expect == "SUPPORTED"
    config = claim.effective_config()
    assert parse_claim(json.dumps(config)).effective_config() == config
    assert Claim.model_validate(config).model_dump() == claim.model_dump()


def test_minimal_claim_fills_defaults():
    claim = parse_claim(MINIMAL)
    assert claim.name == "claim" and claim.path is None
    assert claim.effective_config() == {
        "claim": "Heads carry truthfulness.",
        "model": {"name": "smollm2-135m-instruct", "revision": None, "device": "auto", "dtype": "float32",
                  "trust_remote_code": False},
        "behavior": {"dataset": "truthfulqa", "path": None, "prompt_format": "auto", "system_prompt": None,
                     "max_questions": None, "max_pairs_per_question": None,
                     "split": {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 0}},
        "location": {"sites": ["L0H1"], "subspace": None, "latents": [], "dictionary": None,
                     "from_heuristic": False},
        "heuristic": {"method": "manual", "citation": None, "notes": None},
        "edits": [{"method": "optimal",
                   "objective": "ipo", "tau": 0.1, "beta": 0.1, "batch_size": 4,
                   "learning_rate": 5e-4, "ceiling_learning_rate": 1e-4, "weight_decay": 0.0,
                   "warmup_ratio": 0.0, "init_std": 0.01, "read": "all", "positions": "all", "max_epochs": 10,
                   "convergence_tol": 0.02, "seed": 0}],
        "metrics": ["preference_margin", "preference_accuracy"],
        "side_effects": {"path": None, "n_texts": 100},
        "generation": {"max_new_tokens": 32, "show_answers": 5, "judge": "offline", "judge_model": None,
                       "judge_base_url": None, "judge_max_tokens": 512, "judge_temperature": 0.0,
                       "judge_max_unread": 0.1},
        "random_locations": {"n": 100, "stop": "sequential", "match_layers": False, "draw": None, "seed": 0},
        "verdict": {"metric": "preference_margin", "alpha": 0.05, "rho": 0.9},
        "tests": ["editing"],
        "necessity": None,
        "size_curve": None,
        "stability": {"bootstrap": 0, "seed": 0},
        "evidence": {"bundle": None, "replay": False},
        "expect": None,
    }


def test_claim_is_frozen():
    claim = parse_claim(MINIMAL)
    with pytest.raises(ValueError):
        claim.edits[0].tau = 1.0


def test_from_heuristic_with_probe():
    text = "claim: x\nlocation: {from_heuristic: true}\nheuristic: {method: probe, top_k: 4}\n"
    claim = parse_claim(text)
    assert claim.location.sites == () and claim.heuristic.top_k == 4


# --- overrides and located errors at verify time ------------------------------------------------

def test_with_overrides(tmp_path):
    claim = load_claim(write(tmp_path, FULL))
    new = claim.with_overrides({"random_locations.n": 5, "edits[0].seed": 9, "location.sites[1]": "L2H2"})
    assert (new.random_locations.n, new.edits[0].seed, new.location.sites) == (5, 9, ("L12H3", "L2H2"))
    assert (claim.random_locations.n, claim.edits[0].seed) == (20, 3)  # the original is unchanged
    assert new.path == claim.path
    assert str(new.error("location.sites[1]", "x")).startswith(f"{claim.path}:17:")
    with pytest.raises(ValueError, match="random_locations.m"):
        claim.with_overrides({"random_locations.m": 5})
    with pytest.raises(ValueError, match="nope"):
        claim.with_overrides({"nope": 1})


def test_with_overrides_revalidates(tmp_path):
    claim = load_claim(write(tmp_path, FULL))
    with pytest.raises(ClaimError) as info:
        claim.with_overrides({"random_locations.n": 0})
    assert str(info.value).startswith(f"{claim.path}: random_locations.n: n must be at least 1")
    assert "override" in str(info.value)


def test_error_points_at_item(tmp_path):
    claim = load_claim(write(tmp_path, "claim: x\nlocation:\n  sites:\n    - L3H1\n    - L40H0\n"))
    err = claim.error("location.sites[1]", "layer 40 is out of range (model has 30 layers)")
    assert str(err) == f"{claim.path}:5:7: location.sites[1]: layer 40 is out of range (model has 30 layers)"
    by_tuple = claim.error(("location", "sites", 1), "m")
    assert (by_tuple.line, by_tuple.col, by_tuple.key) == (5, 7, "location.sites[1]")
    # A key absent from the file falls back to its nearest parent that is present.
    assert claim.error("location.sites[9]", "m").line == 4
    assert (claim.error("edits[0].tau", "m").line, claim.error("edits[0].tau", "m").col) == (1, 1)
    with pytest.raises(ValueError, match="`key`"):
        claim.error("location..sites", "m")


def test_error_without_line_map():
    claim = Claim.model_validate({"claim": "x", "location": {"sites": ["L0H1"]}})
    err = claim.error("location.sites[0]", "bad")
    assert (err.line, err.col, str(err)) == (None, None, "<claim>: location.sites[0]: bad")


# --- schema errors, each with its line ----------------------------------------------------------

def test_misspelled_key_suggests(tmp_path):
    text = "claim: x\nlocation:\n  sites: [L0H1]\nedits:\n  - max_epochs: 2\n    tau: 0.1\n    lerning_rate: 5e-4\n"
    message, path = load_error(tmp_path, text)
    assert message.startswith(f"{path}:7:5: edits[0].lerning_rate: ")
    assert "unknown key 'lerning_rate'; did you mean 'learning_rate'?" in message


def test_misspelled_top_level_key(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "random_location:\n  n: 5\n")
    assert message == (f"{path}:3:1: random_location: unknown key 'random_location'; "
                       "did you mean 'random_locations'?")


def test_missing_required_key(tmp_path):
    message, path = load_error(tmp_path, "claim: x\nedits: [{max_epochs: 2}]\n")
    assert message == f"{path}:1:1: location: missing required key"


def test_bad_head_string(tmp_path):
    message, path = load_error(tmp_path, "claim: x\nlocation:\n  sites:\n    - L0H1\n    - L1H2\n    - 3H4\n")
    assert message.startswith(f"{path}:6:7: location.sites[2]: a site must look like 'L12H3'")
    assert "'3H4'" in message


def test_duplicate_head(tmp_path):
    message, path = load_error(tmp_path, "claim: x\nlocation:\n  sites: [L0H1, L1H2, L0H1]\n")
    assert message == f"{path}:3:23: location.sites[2]: duplicate site L0H1 (also sites[0])"


def test_empty_heads(tmp_path):
    message, path = load_error(tmp_path, "claim: x\nlocation:\n  sites: []\n")
    assert message.startswith(f"{path}:3:10: location.sites: location needs non-empty sites")


def test_heads_and_from_heuristic_together(tmp_path):
    text = "claim: x\nlocation:\n  sites: [L1H1]\n  from_heuristic: true\nheuristic: {method: probe, top_k: 3}\n"
    message, path = load_error(tmp_path, text)
    assert message.startswith(f"{path}:4:19: location.from_heuristic: give one of sites, subspace, latents or "
                              "from_heuristic: true, not sites and from_heuristic")


def test_from_heuristic_needs_probe(tmp_path):
    text = "claim: x\nlocation: {from_heuristic: true}\nheuristic:\n  method: probe\n"
    message, path = load_error(tmp_path, text)
    # top_k is absent: the error falls back to where the heuristic section's value starts.
    assert message == f"{path}:4:3: heuristic.top_k: location.from_heuristic: true needs heuristic.top_k"
    message, path = load_error(tmp_path, "claim: x\nlocation: {from_heuristic: true}\nheuristic: {citation: x}\n")
    assert message.startswith(f"{path}:3:12: heuristic.method: location.from_heuristic: true needs a "
                              "heuristic that proposes sites (method: causal_tracing, direction_probe, neuron_attribution, probe)")


def test_random_locations_n_zero(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "random_locations:\n  n: 0\n")
    assert message == (f"{path}:4:6: random_locations.n: n must be at least 1 "
                       "(number of random locations in the null), got 0")


@pytest.mark.parametrize("value, expected", [
    ("1.5", "Input should be less than 1, got 1.5"),
    ("1", "Input should be less than 1, got 1"),  # an int is a number: range error, not type error
    ("true", "Input should be a valid number, got true"),
    ("'0.05'", "Input should be a valid number, got '0.05'"),
    (".nan", "Input should be a finite number, got nan"),
])
def test_alpha(tmp_path, value, expected):
    message, path = load_error(tmp_path, MINIMAL + f"verdict:\n  alpha: {value}\n")
    assert message == f"{path}:4:10: verdict.alpha: {expected}"


def test_strict_ints_and_bools(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "edits: [{max_epochs: 2.0}]\n")
    assert message == f"{path}:3:22: edits[0].max_epochs: Input should be a valid integer, got 2.0"
    message, path = load_error(tmp_path, MINIMAL + "edits: [{max_epochs: yes}]\n")
    assert message == f"{path}:3:22: edits[0].max_epochs: Input should be a valid integer, got true"
    message, path = load_error(tmp_path, MINIMAL + "model: {trust_remote_code: 1}\n")
    assert message.startswith(f"{path}:3:28: model.trust_remote_code: Input should be a valid boolean")


def test_several_errors_reports_first_in_file(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "edits:\n  - max_epochs: 0\n    tau: -1\n")
    assert message == f"{path}:4:17: edits[0].max_epochs: Input should be greater than or equal to 1, got 0 (+1 more)"


@pytest.mark.parametrize("text, expected", [
    ("behavior: {dataset: jsonl}\n", "3:11: behavior.path: dataset: jsonl needs a path"),
    ("behavior:\n  split: {train: 0.5}\n", "4:10: behavior.split: train + validation + test must sum to 1, got 0.9"),
    ("model: {device: gpu}\n", "3:17: model.device: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ("model:\n", "3:7: model: expected a mapping (key: value lines), got null"),
    ("edits: [{warmup_ratio: 1}]\n", "3:24: edits[0].warmup_ratio: Input should be less than 1, got 1"),
    ("heuristic:\n  method: probe\n  probe_accuracies: {L0H1: 0.5, X: 0.3}\n",
     "5:33: heuristic.probe_accuracies.X: a head must look like 'L12H3' (0-based layer and head), got 'X'"),
])
def test_section_errors(tmp_path, text, expected):
    message, path = load_error(tmp_path, MINIMAL + text)
    assert message == f"{path}:{expected}"


# --- file and YAML errors -----------------------------------------------------------------------

def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ClaimError, match="cannot read claim file: No such file"):
        load_claim(tmp_path / "absent.yaml")
    with pytest.raises(ClaimError, match="cannot read claim file: Is a directory"):
        load_claim(tmp_path)


def test_non_utf8(tmp_path):
    message, path = load_error(tmp_path, b"claim: caf\xe9\nlocation: {sites: [L0H1]}\n")
    assert message == f"{path}:1: claim file is not valid UTF-8 (byte 10)"


@pytest.mark.parametrize("text", ["", "  \n\n\t\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    message, path = load_error(tmp_path, text)
    assert message == f"{path}: claim file is empty"


def test_top_level_not_mapping(tmp_path):
    message, path = load_error(tmp_path, "- L0H1\n- L1H2\n")
    assert message == f"{path}:1:1: claim file must be a mapping (key: value lines), got a list"


def test_yaml_syntax_error(tmp_path):
    message, path = load_error(tmp_path, "claim: x\nlocation:\n  sites: [L0H1, L1H2\nedits: []\n")
    assert message.startswith(f"{path}:4:6: ")
    assert "expected ',' or ']'" in message and "flow sequence at line 3" in message


def test_python_tag_refused(tmp_path, capfd):
    marker = tmp_path / "pwned"
    text = MINIMAL + f'model:\n  name: !!python/object/apply:os.system ["echo hi > {marker}"]\n'
    message, path = load_error(tmp_path, text)
    assert message.startswith(f"{path}:4:9: model.name: YAML tag '!!python/object/apply:os.system' is not allowed")
    assert not marker.exists() and "hi" not in capfd.readouterr().out


def test_duplicate_yaml_key(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "edits:\n  - max_epochs: 2\n    tau: 0.3\n    max_epochs: 3\n")
    assert message == f"{path}:6:5: edits[0].max_epochs: duplicate key 'max_epochs' (first on line 4)"


def test_yaml_null_key(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "null: {n: 3}\n")
    assert message == f"{path}:3:1: key 'null' is read as a null, not a string; quote it"


def test_bad_tagged_value(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "edits: [{max_epochs: !!int abc}]\n")
    assert message.startswith(f"{path}: invalid YAML value: ")


def test_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]   # a0 is 10 values, a_i = 1 + 9 * a_(i-1)
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    message, path = load_error(tmp_path, MINIMAL + "\n".join(lines) + "\n")
    assert message.startswith(f"{path}:8:5: a5: YAML aliases expand this value to more than 100000 values")


def test_merge_key_bomb_is_refused_before_it_is_expanded(tmp_path):
    # merge keys copy the merged mappings: constructing m9 would build 10**9 entries (hours)
    lines = ["m0: &m0 {a: 1}"]
    lines += [f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + f"], k{i}: 1}}" for i in range(1, 10)]
    start = time.monotonic()
    message, path = load_error(tmp_path, MINIMAL + "\n".join(lines) + "\n")
    assert message.startswith(f"{path}:8:14: m5.<<: YAML aliases expand this value to more than 100000 values")
    assert time.monotonic() - start < 5


def test_many_plain_values_are_refused_while_composing(tmp_path, monkeypatch):
    monkeypatch.setattr(claim_yaml, "MAX_YAML_VALUES", 50)   # the real bound is 100000
    message, path = load_error(tmp_path, MINIMAL + "x: [" + ", ".join(["1"] * 60) + "]\n")
    assert message.startswith(f"{path}:3:") and "more than 50 YAML values" in message


def test_aliases_count_in_full(tmp_path, monkeypatch):
    # MINIMAL is 8 values and keys; a: 1 key + 4 values; b: 1 key + its list + a's 4 again = 19
    text = MINIMAL + "a: &a [1, 2, 3]\nb: [*a]\n"
    monkeypatch.setattr(claim_yaml, "MAX_YAML_VALUES", 19)
    message, _ = load_error(tmp_path, text)
    assert "unknown key 'a'" in message   # past the size checks, on to the schema
    monkeypatch.setattr(claim_yaml, "MAX_YAML_VALUES", 18)
    message, path = load_error(tmp_path, text)
    assert message.startswith(f"{path}:1:1: YAML aliases expand this value to more than 18 values")


def test_recursive_alias(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "x: &x [1, *x]\n")
    assert message == f"{path}:3:4: x[1]: recursive YAML alias: the anchor's value contains an alias of itself"


def test_deeply_nested_yaml(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "x: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert message == f"{path}:3: YAML nested too deeply (claims need a few levels)"


def test_claim_file_larger_than_one_mib(tmp_path):
    text = MINIMAL + "#" * (claim_module.MAX_CLAIM_BYTES - len(MINIMAL)) + "\n"
    message, path = load_error(tmp_path, text)
    assert message == f"{path}: claim file is larger than 1048576 bytes (1 MiB); a claim is a few dozen lines"
    load_claim(write(tmp_path, text[:-2] + "\n", "just_fits.yaml"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_claim_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ClaimError) as info:
        load_claim(fifo)
    assert str(info.value) == f"{fifo}: cannot read claim file: not a regular file (a FIFO)"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_device_claim_is_refused_unread():
    with pytest.raises(ClaimError) as info:
        load_claim("/dev/zero")
    assert str(info.value) == "/dev/zero: cannot read claim file: not a regular file (a character device)"


SEEDS = {"random_locations.seed": "random_locations: {seed: %s}\n",
         "behavior.split.seed": "behavior: {split: {seed: %s}}\n",
         "edits[0].seed": "edits: [{seed: %s}]\n"}


@pytest.mark.parametrize("field", list(SEEDS))
@pytest.mark.parametrize("value", [-1, 2**32, 2**70])
def test_seeds_are_32_bit(tmp_path, field, value):
    message, path = load_error(tmp_path, MINIMAL + SEEDS[field] % value)
    assert message.startswith(f"{path}:3:")
    assert message.endswith(f"{field}: a seed must be a whole number from 0 to 2**32 - 1 = 4294967295, got {value}")


@pytest.mark.parametrize("field", list(SEEDS))
def test_seed_bounds_are_accepted(field):
    for value in (0, 2**32 - 1):
        assert parse_claim(MINIMAL + SEEDS[field] % value).effective_config() is not None
    with pytest.raises(ClaimError, match="Input should be a valid integer, got true"):
        parse_claim(MINIMAL + SEEDS[field] % "true")


@pytest.mark.parametrize("value, expected", [
    ("1.0e+39", "1e+39 is beyond float32's range (at most 3.403e+38 in magnitude); loccheck computes in float32"),
    ("1.0e-39", "1e-39 is too small for float32 (it would compute as 0 or lose precision; the smallest "
                "normal float32 is 1.175e-38)"),
])
def test_floats_must_fit_float32(tmp_path, value, expected):
    message, path = load_error(tmp_path, MINIMAL + f"edits: [{{tau: {value}}}]\n")
    assert message == f"{path}:3:15: edits[0].tau: {expected}"
    message, path = load_error(tmp_path, MINIMAL + f"edits: [{{method: iti, alphas: [1, {value}]}}]\n")
    assert message == f"{path}:3:35: edits[0].alphas[1]: {expected}"


def test_floats_at_float32_limits_load():
    claim = parse_claim(MINIMAL + "edits: [{beta: 3.4e+38, tau: 1.2e-38, weight_decay: 0}]\n")
    assert claim.edits[0].beta == 3.4e38 and claim.edits[0].weight_decay == 0


def test_learning_rates_beyond_what_adamw_can_step_are_refused(tmp_path):
    # 1e37 is a float32, but AdamW's first step (rate / (1 - beta1)) would overflow
    message, path = load_error(tmp_path, MINIMAL + "edits: [{learning_rate: 1.0e+37}]\n")
    assert message == (f"{path}:3:25: edits[0].learning_rate: 1e+37 is more than 1e+06: AdamW moves each "
                       "parameter by about the rate per step, so a rate this large only overflows float32")
    assert parse_claim(MINIMAL + "edits: [{learning_rate: 1.0e+6}]\n").edits[0].learning_rate == 1e6


def test_random_locations_n_at_most_10000(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "random_locations: {n: 10001}\n")
    assert message == (f"{path}:3:23: random_locations.n: n must be at most 10000 (each random location "
                       "is a fitted edit, and 10000 of them resolve p to 1e-4), got 10001")
    assert parse_claim(MINIMAL + "random_locations: {n: 10000}\n").random_locations.n == 10000


def test_lone_surrogate_in_a_string(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + 'behavior: {system_prompt: "be \\ud800 true"}\n')
    assert message == (f"{path}:3:27: behavior.system_prompt: lone surrogate U+D800 (from an escape such "
                       'as "\\ud800") is not text; write the character itself')
    message, path = load_error(tmp_path, MINIMAL + '"k\\udfff": 1\n')
    assert message.startswith(f"{path}:3:1: lone surrogate U+DFFF")


@pytest.mark.parametrize("name", ["...yaml", ".hidden.yaml", ".yaml", "new\nline.yaml", "esc\x1b[31m.yaml",
                                  "bidi\u202e.yaml"])
def test_claim_name_must_be_a_plain_folder_name(tmp_path, name):
    path = write(tmp_path, MINIMAL, name)
    with pytest.raises(ClaimError) as info:
        load_claim(path)
    message = str(info.value)
    assert message.startswith(f"{printable(str(path))}: the claim's name {Path(name).stem!r} ")
    assert "names its report folder" in message and printable(message) == message


def test_claim_name_keeps_letters_of_any_script(tmp_path):
    assert load_claim(write(tmp_path, MINIMAL, "café_中文.yaml")).name == "café_中文"


def test_messages_escape_control_characters(tmp_path):
    # a key can hold any character through YAML escapes; the message must stay one clean line
    message, path = load_error(tmp_path, MINIMAL + '"bad\\nloccheck: forged\\e[2K\\r\\L\\u202e é": 1\n')
    assert printable(message) == message
    assert "unknown key 'bad\\nloccheck: forged\\x1b[2K\\r\\u2028\\u202e é'" in message


def test_bom_crlf_and_spaces_around_sites_are_harmless(tmp_path):
    text = "claim: Heads carry truthfulness.\r\nlocation:\r\n  sites: [' L0H1 ', L2H3 ]\r\n"
    claim = load_claim(write(tmp_path, codecs.BOM_UTF8 + text.encode()))
    assert claim.location.sites == ("L0H1", "L2H3") and claim.claim == "Heads carry truthfulness."


# --- schema for editors -------------------------------------------------------------------------

def test_json_schema_has_descriptions():
    schema = claim_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["claim", "location"]
    assert schema["properties"]["claim"]["description"] == "The claim, in one sentence."
    init_std = schema["$defs"]["OptimalEditSection"]["properties"]["init_std"]
    assert init_std["description"] == "Std of the random init of the LoRA 'a' vector."
    assert init_std["default"] == 0.01 and init_std["exclusiveMinimum"] == 0
    seed = schema["$defs"]["OptimalEditSection"]["properties"]["seed"]
    assert (seed["minimum"], seed["maximum"]) == (0, 2**32 - 1)
    for name, section in schema["$defs"].items():
        for field, spec in section["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"


def test_dpo_cannot_give_the_verdict_but_may_follow(tmp_path):
    message, path = load_error(tmp_path, MINIMAL + "edits: [{objective: dpo}]\n")
    assert message.startswith(f"{path}:3:21: edits[0].objective: dpo cannot give the verdict: its loss "
                              "has no minimum")
    later = parse_claim(MINIMAL + "edits: [{method: iti}, {method: optimal, objective: dpo}]\n")
    assert later.edits[1].objective == "dpo"


@pytest.mark.parametrize("text, hint", [
    ("edit: {epochs: 2}\n", "edit methods are now a list, `edits: [{method: optimal, ...}]`"),
    ("edits: [{epochs: 2}]\n", "edits now train until they converge; `max_epochs` caps them"),
    ("edits: [{full_model_learning_rate: 0.1}]\n", "`ceiling_learning_rate`"),
    ("edits: [{lr_size_exponent: 0.5}]\n", "`ceiling_learning_rate`, which no claim's size changes"),
])
def test_keys_of_old_claim_files_say_what_replaced_them(tmp_path, text, hint):
    message, _ = load_error(tmp_path, MINIMAL + text)
    assert "unknown key" in message and hint in message


def test_mlp_sites_claim(tmp_path):
    claim = parse_claim("claim: x\nlocation: {sites: [L7M, L3M]}\n")
    assert claim.site_kind == "mlp" and [str(s) for s in claim.location.parsed] == ["L3M", "L7M"]
    text = "claim: x\nlocation: {sites: [L3M]}\nedits:\n  - method: optimal\n  - method: iti\n"
    message, path = load_error(tmp_path, text)
    assert message == (f"{path}:5:13: edits[1].method: edit method 'iti' edits head sites, "
                       "not the claim's mlp sites")
    message, path = load_error(tmp_path, "claim: x\nlocation: {sites: [L3M, L4H0]}\n")
    assert message == (f"{path}:2:25: location.sites[1]: a location holds sites of one kind: "
                       "L4H0 is a head site, L3M a mlp site")
    message, path = load_error(tmp_path, "claim: x\nlocation: {sites: [L3M]}\nheuristic: {method: probe}\n")
    assert "heuristic 'probe' proposes head sites, but the location holds mlp sites" in message


def test_causal_tracing_needs_facts_and_mlp_sites(tmp_path):
    text = "claim: x\nlocation: {sites: [L3M]}\nheuristic: {method: causal_tracing}\n"
    message, path = load_error(tmp_path, text)
    assert message == (f"{path}:3:21: heuristic.method: heuristic 'causal_tracing' needs "
                       "behavior.dataset: known_facts, not truthfulqa")
    text = ("claim: x\nbehavior: {dataset: known_facts}\nlocation: {sites: [L3H1]}\n"
            "heuristic: {method: causal_tracing}\n")
    message, path = load_error(tmp_path, text)
    assert "heuristic 'causal_tracing' proposes mlp sites, but the location holds head sites" in message
    claim = parse_claim("claim: x\nbehavior: {dataset: known_facts}\nlocation: {from_heuristic: true}\n"
                        "heuristic: {method: causal_tracing, top_k: 2, corruption: subject_flip}\n")
    assert claim.site_kind == "mlp" and claim.heuristic.window == 10 and claim.heuristic.samples == 10


@pytest.mark.parametrize("dataset, given, resolved", [
    ("truthfulqa", None, "chosen"), ("known_facts", None, "rejected"),
    ("known_facts", "chosen", "chosen"), ("truthfulqa", "rejected", "rejected")])
def test_the_behaviour_necessity_removes_is_the_rejected_answers_for_known_facts(dataset, given, resolved):
    behavior = f", behavior: {given}" if given else ""
    claim = parse_claim(f"claim: x\nbehavior: {{dataset: {dataset}}}\nlocation: {{sites: [L0H1]}}\n"
                        f"tests: [editing, necessity]\nnecessity: {{n: 19{behavior}}}\n")
    assert claim.necessity_behavior == resolved


def test_draw_every_takes_no_n_and_derives_the_null_from_the_model(tmp_path):
    claim = parse_claim(MINIMAL + "random_locations: {draw: every}\ntests: [editing, necessity]\n")
    assert claim.null_draw == "every" and claim.random_locations.n is None and claim.necessity.n is None
    assert claim.null_size("editing", 48) == claim.null_size("necessity", 48) == 47
    plain = parse_claim(MINIMAL + "tests: [editing, necessity]\n")     # the defaults, when drawn
    assert (plain.random_locations.n, plain.necessity.n) == (100, 99) == (
        plain.null_size("editing", 48), plain.null_size("necessity", 48))
    message, path = load_error(tmp_path, MINIMAL + "random_locations: {draw: every, n: 19}\n")
    assert message == (f"{path}:3:36: random_locations.n: n is not given with draw: every, which fits every "
                       "other location of the claim's shape once (their number less the claim), got n: 19; "
                       "leave n out, or draw at random (draw: sites)")
    message, path = load_error(tmp_path, MINIMAL + "random_locations: {draw: every}\n"
                                                   "tests: [editing, necessity]\nnecessity: {n: 99}\n")
    assert message == (f"{path}:5:16: necessity.n: necessity.n is not given with random_locations.draw: "
                       "every: the necessity null is every other location too, got n: 99; leave it out")
    with pytest.raises(ClaimError, match="random_locations.n: n is not given with draw: every"):
        claim.with_overrides({"random_locations.n": 5})          # --n-null on such a claim


def test_draw_every_is_refused_for_a_subspace(tmp_path):
    message, path = load_error(tmp_path, "claim: A direction carries it.\nlocation: {subspace: {layer: 3, "
                                         "basis: v.npy}}\nrandom_locations: {draw: every}\n")
    assert message.endswith("random_locations.draw: draw: every fits every location of the claim's shape once, "
                            "but a subspace's are a continuum: use draw: haar")
