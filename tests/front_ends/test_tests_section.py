"""The claim keys of the tests beside editing (`tests:`, `necessity:`, `size_curve:`, `expect:` per
test), through `loccheck verify`: each bad value is one line naming file:line and the field, exit
2, no traceback, nothing written (tests/front_ends/test_hostile.py's `run_bad`); a claim with
every test passes every check made before fitting; and `expect: {test: verdict}` sets the exit
code of a run (0 when every listed expectation holds, 1 when one does not)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from loccheck.cli import main
from tests.front_ends.test_hostile import BASE, env, run_bad, write_claim  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow   # bad input through the CLI, with a tiny torch model

TWO = "location: {sites: [L1H2, L0H0]}"        # the known Llama has 2 layers x 4 heads = 8 heads
LATENTS = "location: {latents: [3, 0], dictionary: {path: sae.npz, key: W_dec, layer: 1}}"
ITI_FIRST = ("edits: [{", "edits: [{method: iti}, {")

CASES = {  # id: (location line, (old, new) edit of the claim or None, lines appended,
           #      (index of the appended line at fault, the field), substrings of the message)
    "unknown-test": (TWO, None, ["tests: [editing, bogus]"], (0, "tests[1]"), ["unknown test 'bogus'", "necessity"]),
    "no-tests": (TWO, None, ["tests: []"], (0, "tests"), ["at least 1"]),
    "test-twice": (TWO, None, ["tests: [editing, necessity, editing]"], (0, "tests[2]"), ["listed twice"]),
    "without-editing": (TWO, None, ["tests: [necessity, minimality]"], (0, "tests"), ["must list editing"]),
    "size-zero": (TWO, None, ["size_curve: {sizes: [1, 0]}"], (0, "size_curve.sizes[1]"), ["positive", "0"]),
    "size-negative": (TWO, None, ["size_curve: {sizes: [-2, 3]}"], (0, "size_curve.sizes[0]"), ["positive", "-2"]),
    "size-every-head": (TWO, None, ["size_curve: {sizes: [2, 8]}"], (0, "size_curve.sizes[1]"), ["8", "head sites"]),
    "size-above-every-head": (TWO, None, ["size_curve: {sizes: [12]}"], (0, "size_curve.sizes[0]"), ["12", "8 head sites"]),
    "size-twice": (TWO, None, ["size_curve: {sizes: [2, 3, 2]}"], (0, "size_curve.sizes[2]"), ["listed twice"]),
    "zero-on-latents": (LATENTS, None, ["tests: [editing, necessity]", "necessity: {ablation: zero}"],
                        (1, "necessity.ablation"), ["zero", "latent"]),
    "necessity-not-listed": (TWO, None, ["necessity: {ablation: zero, n: 39}"], (0, "necessity"),
                             ["does not list necessity"]),
    "minimality-one-site": (BASE, None, ["tests: [editing, minimality]"], (0, "tests[1]"), ["at least 2 sites"]),
    "without-after-iti": (TWO, ITI_FIRST, ["tests: [editing, without]"], (0, "tests[1]"), ["optimal", "'iti'"]),
    "expect-unlisted-test": (TWO, None, ["tests: [editing, without]", "expect: {necessity: SUPPORTED}"],
                             (1, "expect.necessity"), ["necessity", "editing"]),
}


def _claim(env, location: str, edit, appended: list[str]) -> tuple[str, int]:
    """The known Llama's claim at `location`, `edit`ed, with `appended` lines; and the 1-based
    line number of the first appended line."""
    text = env["text"].replace(BASE, location)
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit, 1)
    return text + "".join(line + "\n" for line in appended), len(text.splitlines()) + 1


def _sae(env) -> None:
    rng = np.random.default_rng(0)
    np.savez(env["tmp"] / "sae.npz", W_dec=rng.standard_normal((16, 32)).astype(np.float32))


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_tests_section_is_one_line(env, capsys, case):
    location, edit, appended, (at, field), needles = CASES[case]
    _sae(env)
    text, first = _claim(env, location, edit, appended)
    path = write_claim(env, text)
    line = run_bad(env, capsys, path)                 # one line, exit 2, no traceback, nothing written
    assert line.startswith(f"loccheck: error: {path}:{first + at}:"), line
    assert f" {field}: " in line, line
    for needle in needles:
        assert needle in line, line
def test_necessity_settings_at_their_defaults_without_the_test_are_refused(env, capsys):
    text, first = _claim(env, TWO, None, ["necessity: {ablation: mean, n: 99}"])
    line = run_bad(env, capsys, write_claim(env, text))
    assert f":{first}:" in line and " necessity: " in line
@pytest.mark.parametrize("value, field", [("GOOD", "expect"), ("{necessity: GOOD}", "expect.necessity")])
def test_an_unknown_expected_verdict_names_its_field(env, capsys, value, field):
    text, first = _claim(env, TWO, None, ["tests: [editing, necessity]", f"expect: {value}"])
    line = run_bad(env, capsys, write_claim(env, text))
    assert f":{first + 1}:" in line and f" {field}: " in line and "literal[" not in line, line


def test_a_claim_with_every_test_passes_every_check(env):
    """The control: every test, every necessity setting, a size curve and an expectation per
    verdict test parse, and pass the checks `loccheck verify` makes before fitting."""
    from loccheck.claim import load_claim
    from loccheck.run.verify import inspect

    text, _ = _claim(env, TWO, None, ["tests: [editing, necessity, without, minimality]",
                                      "necessity: {ablation: resample, n: 39, stop: full, seed: 7}",
                                      "size_curve: {sizes: [1, 3, 7], n: 2}",
                                      "expect: {editing: SUPPORTED, necessity: FALSIFIED}"])
    claim = load_claim(write_claim(env, text, "good.yaml"))
    assert claim.tests == ("editing", "necessity", "without", "minimality")
    assert claim.verdict_tests == ("editing", "necessity")
    assert (claim.necessity.ablation, claim.necessity.n, claim.necessity.stop, claim.necessity.seed) == \
        ("resample", 39, "full", 7)
    assert claim.size_curve.sizes == (1, 3, 7) and claim.size_curve.n == 2
    assert claim.expect == {"editing": "SUPPORTED", "necessity": "FALSIFIED"}
    inspect(claim, out_dir=None, cache_dir=env["tmp"] / "cache")
    _sae(env)                                          # latents: the ablations that can remove them
    for ablation in ("mean", "resample"):
        text, _ = _claim(env, LATENTS, None, ["tests: [editing, necessity]", f"necessity: {{ablation: {ablation}}}"])
        inspect(load_claim(write_claim(env, text, f"latents-{ablation}.yaml")), out_dir=None,
                cache_dir=env["tmp"] / "cache")
    assert load_claim(write_claim(env, env["text"], "plain.yaml")).tests == ("editing",)   # the default


def test_expectations_per_test_set_the_exit_code(env, capsys):
    """Two dead heads of the known Llama (only L1H2 is live): editing them gains nothing and
    ablating them loses nothing, so both tests are FALSIFIED. Expecting that exits 0; expecting
    necessity SUPPORTED exits 1 (the same fits and ablations, from the cache)."""
    one_epoch = env["text"].replace("max_epochs: 3,", "max_epochs: 1,")
    claims = {}
    for name, expect in {"met": "{editing: FALSIFIED, necessity: FALSIFIED}",
                         "unmet": "{editing: FALSIFIED, necessity: SUPPORTED}"}.items():
        text = one_epoch.replace(BASE, "location: {sites: [L0H0, L0H1]}")
        claims[name] = write_claim(env, text + f"tests: [editing, necessity]\nnecessity: {{n: 19}}\nexpect: {expect}\n",
                                   f"{name}.yaml")
    out = env["tmp"] / "reports"
    capsys.readouterr()
    status = {name: main(["verify", str(path), "--out", str(out), "--quiet"]) for name, path in claims.items()}
    lines = capsys.readouterr().out.strip().splitlines()
    assert status == {"met": 0, "unmet": 1}, lines
    assert lines[0].startswith(f"{claims['met']}: FALSIFIED [editing FALSIFIED (p = 1, "), lines[0]
    assert "necessity FALSIFIED" in lines[0] and lines[0].split("; report:")[0].endswith(": as expected")
    assert "expected editing FALSIFIED, necessity SUPPORTED: NOT as expected" in lines[1], lines[1]
    for name, matched in (("met", True), ("unmet", False)):
        result = json.loads((out / name / "result.json").read_text())
        assert result["tests_listed"] == ["editing", "necessity"]
        assert result["matches_expectation"] is matched
