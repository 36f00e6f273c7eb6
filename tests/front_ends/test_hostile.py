"""Hostile and broken input, through the user's path: `loccheck verify CLAIM` prints one line
naming the file and the field, exits 2, shows no traceback, and writes nothing: no report
folder, nothing in the cache. The detailed messages are unit-tested in tests/claim/test_claim.py,
tests/data/test_data.py and tests/models/test_models.py; here each case only checks what the user sees.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from loccheck.testing import char_tokenizer, claim_text, known_model
from loccheck.cli import main
from loccheck.errors import printable
from loccheck.locations import HeadLoc

pytestmark = pytest.mark.slow   # bad input through the CLI, with tiny torch models (torch)

BASE = "location: {sites: [L1H2]}"


@pytest.fixture
def env(known_llama, tmp_path, monkeypatch):
    """A valid claim on the known Llama, a private cache, and the CWD in tmp_path (so the
    default report folder, reports/NAME, is checked too)."""
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    model_dir, pairs = known_llama
    return {"model": model_dir, "pairs": pairs, "tmp": tmp_path,
            "text": claim_text(model_dir, pairs, ["L1H2"], n=19)}


def run_bad(env, capsys, claim: Path | str | list, *extra: str) -> str:
    """Run the CLI on a claim (or several) that must be refused; return its one error line."""
    tmp = env["tmp"]
    out = tmp / "out"
    claims = [str(c) for c in claim] if isinstance(claim, list) else [str(claim)]
    capsys.readouterr()                  # drop what setting the case up printed
    status = main(["verify", *claims, "--out", str(out), "--quiet", *extra])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("loccheck: error: "), captured.err
    assert printable(lines[0]) == lines[0], "raw control characters: " + ascii(lines[0])
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists() and not (tmp / "reports").exists()
    cache = tmp / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]
    return lines[0]


def write_claim(env, text: str, name: str = "bad.yaml") -> Path:
    path = env["tmp"] / name
    path.write_text(text)
    return path


# --- claim files ---------------------------------------------------------------------------------

EDITS = {  # id: (old, new, substrings the error line must contain besides the file)
    "yaml-syntax": (BASE, "location: {sites: [L1H2}", [":5:"]),
    "misspelled-key": ("random_locations:", "random_location:", [":7:", "did you mean 'random_locations'"]),
    "misspelled-nested-key": ("verdict: {alpha", "verdict: {alhpa", ["verdict.alhpa", "did you mean 'alpha'"]),
    "wrong-type-int": ("n: 19", "n: many", ["random_locations.n"]),
    "wrong-type-float": ("alpha: 0.05", "alpha: '0.05'", ["verdict.alpha"]),
    "wrong-type-section": ("verdict: {alpha: 0.05}", "verdict: [0.05]", ["verdict"]),
    "bad-head-spelling": (BASE, "location: {sites: [H2L1]}", ["location.sites[0]"]),
    "duplicate-heads": (BASE, "location: {sites: [L1H2, L0H0, L1H2]}", ["location.sites[2]", "duplicate"]),
    "empty-location": (BASE, "location: {sites: []}", ["location.sites"]),
    "no-location": (BASE, "", ["location", "missing"]),
    "zero-random-locations": ("n: 19", "n: 0", ["random_locations.n"]),
    "negative-random-locations": ("n: 19", "n: -3", ["random_locations.n"]),
    "alpha-zero": ("alpha: 0.05", "alpha: 0", ["verdict.alpha"]),
    "alpha-one": ("alpha: 0.05", "alpha: 1", ["verdict.alpha"]),
    "alpha-above-one": ("alpha: 0.05", "alpha: 1.5", ["verdict.alpha"]),
    "alpha-negative": ("alpha: 0.05", "alpha: -0.1", ["verdict.alpha"]),
    "alpha-nan": ("alpha: 0.05", "alpha: .nan", ["verdict.alpha"]),
    "split-not-summing-to-one": ("test: 0.25,", "test: 0.5,", ["behavior.split"]),
    "duplicate-yaml-key": ("verdict: {alpha: 0.05}", "verdict: {alpha: 0.05}\nverdict: {alpha: 0.1}", ["duplicate key"]),
    "top-level-list": None,
    # the location does not fit the model (known after loading it)
    "layer-out-of-range": (BASE, "location: {sites: [L2H0]}", [":5:", "location.sites[0]", "2 layers x 4 heads"]),
    "head-out-of-range": (BASE, "location: {sites: [L0H1, L1H4]}", [":5:", "location.sites[1]", "2 layers x 4 heads"]),
    "every-head": (BASE, "location: {sites: [L0H0, L0H1, L0H2, L0H3, L1H0, L1H1, L1H2, L1H3]}",
                   ["location.sites", "every head"]),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_bad_claim(env, capsys, case):
    if case == "top-level-list":
        _refused(env, capsys, "- claim: x\n- location: {sites: [L1H2]}\n", ["mapping"])
    else:
        old, new, must = EDITS[case]
        _refused(env, capsys, _edited(env, old, new), must)


def _edited(env, old: str | None, new: str) -> str:
    """The valid claim with `old` replaced by `new` (`new` appended when `old` is None)."""
    if old is None:
        return env["text"] + new
    assert old in env["text"]
    return env["text"].replace(old, new, 1)


def _refused(env, capsys, text: str, must) -> None:
    """The claim is refused with one line naming its file and holding every part of `must`."""
    path = write_claim(env, text)
    line = run_bad(env, capsys, path)
    assert f"{path}:" in line
    for part in must:
        assert part in line, line


@pytest.mark.parametrize("value", ["0", "-1", "many", "10001", "99999999999999999999"])
def test_bad_number_of_random_locations_on_the_command_line(env, capsys, value):
    # argparse refuses it: exit 2, its usage line and one error line naming the flag
    path = write_claim(env, env["text"])
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(path), "--out", str(env["tmp"] / "out"), "--n-null", value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "error: argument --n-null" in err.strip().splitlines()[-1]
    assert not (env["tmp"] / "out").exists() and not (env["tmp"] / "cache").exists()


def test_bad_override(env, capsys):
    path = write_claim(env, env["text"])
    line = run_bad(env, capsys, path, "--device", "tpu")
    assert str(path) in line and "model.device" in line and "(set by an override)" in line


def test_cuda_without_a_gpu(env, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    path = write_claim(env, env["text"].replace("device: cpu", "device: cuda"))
    assert "model.device" in run_bad(env, capsys, path)


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {pwned}']",
    "!!python/object/new:subprocess.Popen [['touch', '{pwned}']]",
    "!!python/name:os.system",
    "!!python/module:os",
])
def test_python_tags_are_refused_and_nothing_runs(env, capsys, tag):
    pwned = env["tmp"] / "PWNED"
    text = env["text"].replace('claim: "The behaviour lives in L1H2."',
                               "claim: " + tag.format(pwned=pwned))
    path = write_claim(env, text)
    line = run_bad(env, capsys, path)
    assert f"{path}:1:" in line and "python" in line
    assert not pwned.exists()


def test_missing_claim_and_directory_claim(env, capsys):
    missing = env["tmp"] / "nope.yaml"
    assert str(missing) in run_bad(env, capsys, missing)
    folder = env["tmp"] / "folder.yaml"
    folder.mkdir()
    assert str(folder) in run_bad(env, capsys, folder)


@pytest.mark.parametrize("content", [b"", b"  \n\n", b"# only a comment\n"], ids=["empty", "blank", "comment"])
def test_empty_claim_file(env, capsys, content):
    path = env["tmp"] / "empty.yaml"
    path.write_bytes(content)
    assert "empty" in run_bad(env, capsys, path)


def test_non_utf8_claim_file(env, capsys):
    path = env["tmp"] / "latin1.yaml"
    path.write_bytes(env["text"].replace("The behaviour", "Le comportement \xe9").encode("latin-1"))
    line = run_bad(env, capsys, path)
    assert f"{path}:1" in line and "UTF-8" in line


def test_several_claims_are_all_checked_before_any_work(env, capsys):
    good = write_claim(env, env["text"], "good.yaml")
    bad = write_claim(env, env["text"].replace("n: 19", "n: 0"), "bad.yaml")
    status = main(["verify", str(good), str(bad), "--out", str(env["tmp"] / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and str(bad) in err[0]
    assert not (env["tmp"] / "out").exists() and not (env["tmp"] / "cache").exists()


# --- hostile claim files: refused at once, in one line -------------------------------------------

MERGE_BOMB = "m0: &m0 {a: 1}\n" + "".join(  # constructing m9 would build 10**9 entries
    f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + f"], k{i}: 1}}\n" for i in range(1, 10))

HOSTILE = {  # id: (old, new, substrings the error line must contain besides the file)
    "yaml-deep": (None, "x: " + "[" * 100_000 + "]" * 100_000 + "\n", [":9:", "nested too deeply"]),
    "billion-laughs-merge": (None, MERGE_BOMB, [":14:14:", "m5.<<", "YAML aliases expand"]),
    "seed-negative": ("n: 19, seed: 0", "n: 19, seed: -1", ["random_locations.seed", "2**32 - 1"]),
    "seed-huge": ("n: 19, seed: 0", f"n: 19, seed: {2**70}", ["random_locations.seed", "2**32 - 1"]),
    "split-seed-huge": ("test: 0.25, seed: 0", f"test: 0.25, seed: {2**70}", ["behavior.split.seed", "2**32 - 1"]),
    "edit-seed-huge": ("init_std: 0.1", f"init_std: 0.1, seed: {2**70}", ["edits[0].seed", "2**32 - 1"]),
    "lr-beyond-f32": ("learning_rate: 0.05", "learning_rate: 1.0e+39", ["edits[0].learning_rate", "float32"]),
    "lr-beyond-adamw": ("learning_rate: 0.05", "learning_rate: 1.0e+37", ["edits[0].learning_rate", "AdamW", "float32"]),
    "n-10M": ("n: 19", "n: 10000000", ["random_locations.n", "at most 10000", "fitted edit"]),
    "surrogate-in-claim": ("prompt_format: qa", 'prompt_format: qa, system_prompt: "\\ud800"',
                           ["behavior.system_prompt", "lone surrogate"]),
    "ctrl-yaml-key": (None, '"bad\\nloccheck: forged\\x1b[2K\\r": 1\n',
                      ["unknown key 'bad\\nloccheck: forged\\x1b[2K\\r'"]),
    # silent substitutions (issue 21, item 17): refused, never read as something else
    "fullwidth-digit": (BASE, "location: {sites: [L\uff11H2]}", [":5:", "location.sites[0]", "'L\uff11H2'"]),
    "fullwidth-mlp-digit": (BASE, "location: {sites: [L\uff11M]}", ["location.sites[0]"]),
    "binary-claim": ('claim: "The behaviour lives in L1H2."', "claim: !!binary VGhlIGJlaGF2aW91cg==",
                     [":1:8:", "claim", "YAML tag '!!binary' is not allowed"]),
    "binary-citation": (None, "heuristic: {method: manual, citation: !!binary VGhlIGJlaGF2aW91cg==}\n",
                        ["heuristic.citation", "'!!binary'"]),
    "nul-in-claim": ("lives in L1H2.", "lives in\\0 L1H2.", [":1:8:", "claim", "U+0000"]),
    "esc-in-claim": ("lives in L1H2.", "lives in \\e[2KL1H2.", ["claim", "U+001B"]),
    "cr-in-claim": ("lives in L1H2.", "lives in\\rL1H2.", ["claim", "U+000D"]),
    "u2028-in-claim": ("lives in L1H2.", "lives in\\LL1H2.", ["claim", "U+2028"]),
    "esc-in-citation": (None, 'heuristic: {method: manual, citation: "Smith\\e[31m 2024"}\n',
                        ["heuristic.citation", "U+001B"]),
    "nul-in-system-prompt": ("prompt_format: qa", 'prompt_format: qa, system_prompt: "be\\0 good"',
                             ["behavior.system_prompt", "U+0000"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_claim(env, capsys, case):
    old, new, must = HOSTILE[case]
    _refused(env, capsys, _edited(env, old, new), must)


def test_only_ascii_digits_are_digits(env):
    # every pattern that reads a number out of claim text: sites, the device, override keys
    from loccheck.claim import parse_claim
    from loccheck.claim.keys import parse_key
    from loccheck.errors import ClaimError
    from loccheck.locations import parse_site

    for text in ["L\uff13H5", "L3H\uff15", "L\uff13M", "L\u0663H5"]:     # fullwidth, Arabic-Indic
        with pytest.raises(ValueError):
            parse_site(text)
    with pytest.raises(ClaimError, match="model.device: device must be"):
        parse_claim(env["text"].replace("device: cpu", "device: 'cuda:\uff10'"), env["tmp"] / "c.yaml")
    with pytest.raises(ValueError):
        parse_key("edits[\uff10].seed")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_claim(env, capsys):
    fifo = env["tmp"] / "fifo.yaml"
    os.mkfifo(fifo)
    assert f"{fifo}: cannot read claim file: not a regular file (a FIFO)" in run_bad(env, capsys, fifo)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_device_claim(env, capsys):
    assert "/dev/zero: cannot read claim file: not a regular file" in run_bad(env, capsys, "/dev/zero")


@pytest.mark.parametrize("name", ["...yaml", "na\nme\x1b[31m.yaml"])
def test_claim_name_that_is_no_folder_name(env, capsys, name):
    path = write_claim(env, env["text"], name)
    line = run_bad(env, capsys, path)
    assert printable(str(path)) in line and "names its report folder" in line


def test_claim_files_that_share_a_file_name(env, capsys):
    (env["tmp"] / "d1").mkdir()
    (env["tmp"] / "d2").mkdir()
    one, two = write_claim(env, env["text"], "d1/same.yaml"), write_claim(env, env["text"], "d2/same.yaml")
    line = run_bad(env, capsys, [one, two])
    assert f"{one} and {two} share the file name 'same'" in line and str(env["tmp"] / "out" / "same") in line


# --- data files --------------------------------------------------------------------------------

def _pairs_file(env, lines: list, name="pairs.jsonl", raw: bytes | None = None) -> Path:
    path = env["tmp"] / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _with_data(env, data: Path) -> Path:
    return write_claim(env, env["text"].replace(str(env["pairs"]), str(data)))


def _records(n, **over):
    return [{"prompt": f"is thing{i} real?", "chosen": "yes", "rejected": "no", "group": f"q{i}", **over}
            for i in range(n)]


def test_no_usable_pairs(env, capsys):
    data = _pairs_file(env, _records(12, rejected="yes"))           # chosen == rejected everywhere
    line = run_bad(env, capsys, _with_data(env, data))
    assert str(data) in line and "no usable preference pairs" in line


def test_too_few_questions_for_the_split(env, capsys):
    data = _pairs_file(env, _records(2))
    line = run_bad(env, capsys, _with_data(env, data))
    assert str(data) in line and "needs at least" in line


def test_same_question_in_two_groups(env, capsys):
    records = _records(12)
    records.append({**records[3], "chosen": "yes!", "group": "q-other"})   # line 13: q3's prompt again
    data = _pairs_file(env, records)
    line = run_bad(env, capsys, _with_data(env, data))
    assert f"{data}:13:" in line and "is thing3 real?" in line and "'q3'" in line and "line 4" in line


def test_same_question_with_and_without_a_group(env, capsys):
    records = _records(12)
    records.append({k: v for k, v in records[0].items() if k != "group"})  # group defaults to the prompt
    data = _pairs_file(env, records)
    assert f"{data}:13:" in run_bad(env, capsys, _with_data(env, data))


def test_same_question_in_two_truthfulqa_rows(env, capsys):
    csv = env["tmp"] / "TruthfulQA.csv"
    rows = [f"Q{i}?,t,t,f" for i in range(10)] + ["Q4?,t2,t2,f2"]        # row 11 repeats row 5
    csv.write_text("Question,Best Answer,Correct Answers,Incorrect Answers\n" + "\n".join(rows) + "\n")
    text = env["text"].replace(f"dataset: jsonl, path: '{env['pairs']}'", f"dataset: truthfulqa, path: '{csv}'")
    line = run_bad(env, capsys, write_claim(env, text))
    assert str(csv) in line and "'Q4?'" in line and "rows 5 and 11" in line


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "non-utf8", "not-json"])
def test_broken_data_file(env, capsys, case):
    data = env["tmp"] / "data.jsonl"
    if case == "directory":
        data.mkdir()
    elif case == "empty":
        data.write_text("")
    elif case == "non-utf8":
        data.write_bytes(b'{"prompt": "caf\xe9", "chosen": "yes", "rejected": "no"}\n')
    elif case == "not-json":
        data.write_text("prompt,chosen,rejected\nis it?,yes,no\n")
    line = run_bad(env, capsys, _with_data(env, data))
    assert str(data) in line or repr(str(data)) in line


@pytest.mark.parametrize("case", ["deep", "5000-digits", "lone-surrogate"])
def test_data_line_python_cannot_take(env, capsys, case):
    bad = {"deep": '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}",
           "5000-digits": '{"prompt": "x", "chosen": "a", "rejected": "b", "group": ' + "9" * 5000 + "}",
           "lone-surrogate": json.dumps({"prompt": "bad \ud800 x", "chosen": "a", "rejected": "b"})}[case]
    data = env["tmp"] / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records(12)) + bad + "\n")
    line = run_bad(env, capsys, _with_data(env, data))
    assert f"{data}:13: " in line and "behavior.path" in line
    assert {"deep": "nested too deeply", "5000-digits": "more than 4300 digits",
            "lone-surrogate": "field 'prompt' holds a lone surrogate U+D800"}[case] in line


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_data_file(env, capsys):
    fifo = env["tmp"] / "pairs.fifo"
    os.mkfifo(fifo)
    assert f"{fifo}: cannot read: not a regular file (a FIFO)" in run_bad(env, capsys, _with_data(env, fifo))


def test_data_path_of_an_unknown_user(env, capsys):
    line = run_bad(env, capsys, _with_data(env, "~nosuchuser-loccheck/pairs.jsonl"))
    assert "behavior.path: cannot expand '~nosuchuser-loccheck'" in line


def test_control_characters_in_a_data_path(env, capsys):
    data = str(env["tmp"]) + "/no\\x1b[2Kpe\\nx.jsonl"   # YAML escapes, in a double-quoted path
    text = env["text"].replace(f"path: '{env['pairs']}'", f'path: "{data}"')
    assert text != env["text"]
    assert "no\\x1b[2Kpe\\nx.jsonl" in run_bad(env, capsys, write_claim(env, text))


def _data_dir(env, monkeypatch) -> Path:
    """A LOCCHECK_DATA_DIR holding a usable TruthfulQA.csv and known_1000.json: what an explicit
    behavior.path must never be silently replaced by."""
    folder = env["tmp"] / "data"
    folder.mkdir()
    rows = [f"Q{i}?,t{i},t{i},f{i}" for i in range(12)]
    (folder / "TruthfulQA.csv").write_text("Question,Best Answer,Correct Answers,Incorrect Answers\n"
                                           + "\n".join(rows) + "\n")
    facts = [{"known_id": i, "subject": f"Sub{i}", "attribute": f"a{i % 3}", "template": "{} is in",
              "prediction": f" a{i % 3}", "prompt": f"Sub{i} is in", "relation_id": f"P{i % 2}"}
             for i in range(12)]
    (folder / "known_1000.json").write_text(json.dumps(facts))
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(folder))
    return folder


@pytest.mark.parametrize("dataset, name", [("truthfulqa", "TruthfulQA.csv"), ("known_facts", "known_1000.json")])
def test_explicit_data_path_that_is_missing_is_not_replaced(env, capsys, monkeypatch, dataset, name):
    _data_dir(env, monkeypatch)
    text = env["text"].replace(f"dataset: jsonl, path: '{env['pairs']}'",
                               f"dataset: {dataset}, path: 'gone/{name}'")
    path = write_claim(env, text)
    line = run_bad(env, capsys, path)       # one line: no warning that something else was used
    assert f"{path}:3:" in line and "behavior.path" in line and f"'gone/{name}' does not exist" in line
    assert str(env["tmp"] / "gone" / name) in line


def test_control_characters_in_a_csv_header(env, capsys):
    csv = env["tmp"] / "TruthfulQA.csv"
    csv.write_text('"Question\nloccheck: forged",Best Answer\nq,a\n')
    text = env["text"].replace(f"dataset: jsonl, path: '{env['pairs']}'", f"dataset: truthfulqa, path: '{csv}'")
    assert "Question\\nloccheck: forged" in run_bad(env, capsys, write_claim(env, text))


# --- model folders -------------------------------------------------------------------------------

def _with_model(env, model: Path | str) -> Path:
    return write_claim(env, env["text"].replace(str(env["model"]), str(model)))


def test_missing_model_folder(env, capsys):
    missing = env["tmp"] / "no-such-model"
    line = run_bad(env, capsys, _with_model(env, missing))
    assert "model.name" in line and str(missing) in line and "does not exist" in line


@pytest.mark.parametrize("config", [None, "{not json", "[1, 2]"], ids=["no-config", "bad-json", "not-object"])
def test_model_folder_without_a_usable_config(env, capsys, config):
    folder = env["tmp"] / "broken-model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    line = run_bad(env, capsys, _with_model(env, folder))
    assert "model.name" in line and str(folder) in line


def test_unsupported_architecture(env, capsys):
    from transformers import OPTConfig, OPTForCausalLM

    folder = env["tmp"] / "opt"
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                             num_attention_heads=2, word_embed_proj_dim=16)).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    line = run_bad(env, capsys, _with_model(env, folder))
    assert "model.name" in line and str(folder) in line and "'opt'" in line and "llama" in line


def test_a_model_failing_a_structural_check(env, capsys):
    # Cohere has no adapter; laid out like Llama its heads and MLPs pass, but it scales its
    # logits, which loccheck's scoring does not reproduce: refused, never scored.
    from transformers import CohereConfig, CohereForCausalLM

    folder = env["tmp"] / "cohere"
    torch.manual_seed(0)
    CohereForCausalLM(CohereConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, initializer_range=0.5, bos_token_id=1, eos_token_id=2,
                                   pad_token_id=0)).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    line = run_bad(env, capsys, _with_model(env, folder))
    assert "model.name" in line and str(folder) in line and "'cohere'" in line
    assert "check 'logits' failed" in line


def test_a_quantised_model_loccheck_cannot_load(env, capsys):
    folder = env["tmp"] / "quantised"
    shutil.copytree(env["model"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (folder / "config.json").write_text(json.dumps(config))
    line = run_bad(env, capsys, _with_model(env, folder))
    assert "model.name" in line and str(folder) in line


def test_control_characters_in_a_model_config(env, capsys):
    folder = env["tmp"] / "evil-model"
    shutil.copytree(env["model"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", architectures=["X\nloccheck: forged\x1b[2K"])
    (folder / "config.json").write_text(json.dumps(config))
    line = run_bad(env, capsys, _with_model(env, folder))
    assert "model.name" in line and "X\\nloccheck: forged\\x1b[2K" in line


REMOTE_CODE = """\
from pathlib import Path
Path({sentinel!r}).write_text("custom code ran")
from transformers import LlamaConfig

class CustomConfig(LlamaConfig):
    model_type = "loccheck_custom"
"""


@pytest.fixture
def remote_code_model(env):
    """A model folder that needs its own code: config.json's auto_map names a class in a .py
    file beside it that leaves a sentinel file when imported."""
    folder = env["tmp"] / "custom-model"
    known_model("llama", [HeadLoc(1, 2)]).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    sentinel = env["tmp"] / "CUSTOM_CODE_RAN"
    for module in ("configuration_custom", "modeling_custom"):
        (folder / f"{module}.py").write_text(REMOTE_CODE.format(sentinel=str(sentinel)))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "loccheck_custom"
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, sentinel


def test_remote_code_is_refused_without_opting_in(env, capsys, remote_code_model):
    folder, sentinel = remote_code_model
    line = run_bad(env, capsys, _with_model(env, folder))
    assert "model.trust_remote_code" in line and str(folder) in line
    assert not sentinel.exists()
    path = write_claim(env, env["text"].replace(str(env["model"]), str(folder)).replace(
        "device: cpu", "device: cpu, trust_remote_code: false"))
    assert "model.trust_remote_code" in run_bad(env, capsys, path)
    assert not sentinel.exists()


def test_opting_in_passes_the_gate(remote_code_model):
    # Only the gate: loading would run the folder's code, which is what opting in means.
    from loccheck.models.loading import _check_local_config

    folder, sentinel = remote_code_model
    _check_local_config(folder, str(folder), trust_remote_code=True)
    assert not sentinel.exists()


def _model_copy(env, mutate_config=None, mutate_folder=None) -> Path:
    import shutil

    folder = env["tmp"] / "model-copy"
    shutil.copytree(env["model"], folder)
    if mutate_config is not None:
        config = json.loads((folder / "config.json").read_text())
        mutate_config(config)
        (folder / "config.json").write_text(json.dumps(config))
    if mutate_folder is not None:
        mutate_folder(folder)
    return folder


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])


def _nest_config(folder: Path) -> None:
    text = (folder / "config.json").read_text().rstrip().rstrip("}")
    (folder / "config.json").write_text(text + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")


MODELS = {  # id: (mutate config, mutate folder, substrings of the error line)
    "config-nested-too-deeply": (None, _nest_config, ["config.json", "nested too deeply"]),
    "truncated-weights": (None, _truncate_weights, ["model.safetensors", "not a complete safetensors file"]),
    "no-heads": (lambda c: c.update(num_attention_heads=0), None, ["num_attention_heads", ">= 1, got 0"]),
    "a-million-layers": (lambda c: c.update(num_hidden_layers=1_000_000), None,
                         ["declares 1000000 layers, but the weights hold 2"]),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_broken_model_folder(env, capsys, case):
    config, folder, must = MODELS[case]
    line = run_bad(env, capsys, _with_model(env, _model_copy(env, config, folder)))
    assert "model.name" in line
    for part in must:
        assert part in line, line


def test_chat_template_that_does_not_render(env, capsys):
    def broken_template(folder):
        (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    model = _model_copy(env, mutate_folder=broken_template)
    path = write_claim(env, env["text"].replace(str(env["model"]), str(model)).replace(
        "prompt_format: qa", "prompt_format: chat"))
    line = run_bad(env, capsys, path)
    assert "behavior.prompt_format" in line and "TemplateSyntaxError" in line


@pytest.mark.parametrize("size", ["beyond-context", "ten-megabytes"])
def test_prompt_longer_than_the_model_reads(env, capsys, size):
    # GPT-2 has learned positions (1024 here): a longer prompt would index past them
    from loccheck.testing import write_model_dir

    gpt2 = write_model_dir(env["tmp"] / "gpt2", "gpt2", [HeadLoc(1, 2)])
    prompt = "x" * (3000 if size == "beyond-context" else 10_000_000)
    data = _pairs_file(env, _records(12) + [{"prompt": prompt, "chosen": "yes", "rejected": "no"}])
    path = write_claim(env, env["text"].replace(str(env["pairs"]), str(data)).replace(str(env["model"]), str(gpt2)))
    line = run_bad(env, capsys, path)
    unit = "tokens" if size == "beyond-context" else "characters"
    assert "behavior.path" in line and f"{unit} long" in line and "reads at most 1024 tokens" in line


def test_model_folder_of_an_unknown_user(env, capsys):
    line = run_bad(env, capsys, _with_model(env, "~nosuchuser-loccheck/model"))
    assert "model.name" in line and "cannot expand '~nosuchuser-loccheck'" in line


def test_a_gguf_that_is_not_one_is_refused_before_converting(env, capsys):
    fake = env["tmp"] / "fake.gguf"
    fake.write_text("not a model at all\n")
    line = run_bad(env, capsys, _with_model(env, fake))     # one line: no "converting ..." first
    assert "model.name" in line and f"{fake} is not a GGUF file" in line and "b'not '" in line


def test_report_folder_that_cannot_be_made_names_the_claim(env, capsys):
    blocker = env["tmp"] / "a-file"
    blocker.write_text("not a folder")
    path = write_claim(env, env["text"])
    capsys.readouterr()
    status = main(["verify", str(path), "--out", str(blocker / "reports"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"loccheck: error: {path}: report folder '{blocker / 'reports' / 'bad'}' ")
    assert not (env["tmp"] / "cache").exists() or not list((env["tmp"] / "cache").rglob("*.json"))


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_report_or_cache_folder_that_is_a_file(env, capsys, flag):
    blocker = env["tmp"] / "a-file"
    blocker.write_text("not a folder")
    path = write_claim(env, env["text"])
    capsys.readouterr()
    status = main(["verify", str(path), flag, str(blocker / "sub"), "--quiet"]
                  + (["--out", str(env["tmp"] / "out")] if flag == "--cache-dir" else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "a-file" in err[0] and "a file" in err[0]
    assert not (env["tmp"] / "cache").exists() and not (env["tmp"] / "out").exists()


def test_a_data_error_in_a_later_claim_stops_the_run_before_any_fit(env, capsys):
    good = write_claim(env, env["text"], "good.yaml")
    bad = write_claim(env, env["text"].replace(str(env["pairs"]), str(env["tmp"] / "missing.jsonl")), "bad.yaml")
    status = main(["verify", str(good), str(bad), "--out", str(env["tmp"] / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and str(bad) in err[0] and "behavior.path" in err[0]
    assert not (env["tmp"] / "out").exists()
    cache = env["tmp"] / "cache"
    assert not cache.exists() or not list((cache / "fits").rglob("*"))


def test_side_effect_metric_without_texts(env, capsys, monkeypatch):
    monkeypatch.delenv("LOCCHECK_DATA_DIR", raising=False)
    path = write_claim(env, env["text"] + "metrics: [preference_margin, kl]\n")
    line = run_bad(env, capsys, path)
    assert f"{path}:" in line and "side_effects.path" in line and "LOCCHECK_DATA_DIR" in line
    missing = write_claim(env, env["text"] + "metrics: [kl]\nside_effects: {path: nowhere.txt}\n", "missing.yaml")
    assert "side-effect texts 'nowhere.txt' not found" in run_bad(env, capsys, missing)
