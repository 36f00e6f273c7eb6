"""The fitted-edit cache: unchanged claims refit nothing, larger nulls fit only the new draws,
and a damaged entry is refitted, never trusted."""
import json
import warnings

import pytest

from loccheck.locations import head_sites
from loccheck.testing import claim_text
from loccheck.claim import parse_claim
from loccheck.errors import LoccheckWarning
from loccheck.stats.null import sample_null_locations
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # fits edits on a tiny model (torch)


def _claim(known_llama, tmp_path, n, heads=("L1H2", "L0H0"), extra=""):
    model_dir, pairs = known_llama
    return parse_claim(claim_text(model_dir, pairs, list(heads), n=n, alpha=0.1, extra=extra, stop="full"),
                       path=tmp_path / "cached.yaml")


def test_second_run_fits_nothing_and_is_byte_identical(known_llama, tmp_path):
    cache = tmp_path / "cache"
    claim = _claim(known_llama, tmp_path, n=6)
    first = verify(claim, out_dir=tmp_path / "a", cache_dir=cache, progress=False)
    distinct = {tuple(loc) for loc in sample_null_locations(head_sites(2, 4), size=2, n=6, seed=0)}
    assert first.n_fitted == 2 + len(distinct)          # claim, whole model, each distinct draw
    second = verify(claim, out_dir=tmp_path / "b", cache_dir=cache, progress=False)
    assert second.n_fitted == 0
    assert (tmp_path / "a" / "result.json").read_bytes() == (tmp_path / "b" / "result.json").read_bytes()
    assert (tmp_path / "a" / "report.md").read_bytes() == (tmp_path / "b" / "report.md").read_bytes()


def test_growing_the_null_fits_only_the_new_draws(known_llama, tmp_path):
    cache = tmp_path / "cache"
    claim = _claim(known_llama, tmp_path, n=5)
    verify(claim, write_report=False, cache_dir=cache, progress=False)
    old = {tuple(l) for l in sample_null_locations(head_sites(2, 4), size=2, n=5, seed=0)}
    grown = sample_null_locations(head_sites(2, 4), size=2, n=10, seed=0)
    new = {tuple(l) for l in grown[5:]} - old
    assert len(new) >= 3          # the seed gives mostly fresh draws, so the count means something
    larger = verify(claim.with_overrides({"random_locations.n": 10}), write_report=False,
                    cache_dir=cache, progress=False)
    assert larger.n_fitted == len(new)
    assert larger.null_gains[:5] == verify(claim, write_report=False, cache_dir=cache,
                                           progress=False).null_gains


def _damage(path, how: str) -> None:
    from loccheck.cache import content_key

    entry = json.loads(path.read_text())
    if how == "truncated":
        path.write_text(path.read_text()[:40])
    elif how == "directory":
        path.unlink()
        path.mkdir()
        (path / "inside").write_text("{}")
    elif how == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif how == "not-utf8":
        path.write_bytes(b"\xff\xfe" + path.read_bytes())
    elif how == "missing-field":              # well-formed, checksum right, but no parameters
        record = {k: v for k, v in entry["record"].items() if k != "state"}
        path.write_text(json.dumps({"key": entry["key"], "checksum": content_key(record), "record": record}))
    elif how == "other-location":             # a sound record of another edit under this key
        record = {**entry["record"], "location": ["L0H0", "L0H1"]}
        path.write_text(json.dumps({"key": entry["key"], "checksum": content_key(record), "record": record}))


@pytest.mark.parametrize("how", ["truncated", "directory", "deep", "not-utf8", "missing-field", "other-location"])
def test_damaged_entry_is_refitted_with_a_warning(known_llama, tmp_path, how):
    cache = tmp_path / "cache"
    claim = _claim(known_llama, tmp_path, n=3)
    first = verify(claim, write_report=False, cache_dir=cache, progress=False)
    entries = sorted((cache / "fits").rglob("*.json"))
    victim = next(p for p in entries if json.loads(p.read_text())["record"].get("role") is None
                  and json.loads(p.read_text())["record"].get("location") == ["L0H0", "L1H2"])
    _damage(victim, how)
    with pytest.warns(LoccheckWarning, match="corrupt"):
        second = verify(claim, write_report=False, cache_dir=cache, progress=False)
    assert second.n_fitted == 1
    assert second.claim_gain == first.claim_gain                     # refitted, same numbers
    assert json.loads(victim.read_text())["record"]["location"] == ["L0H0", "L1H2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                # and sound from now on
        assert verify(claim, write_report=False, cache_dir=cache, progress=False).n_fitted == 0


def test_a_score_that_is_not_a_number_is_scored_again(known_llama, tmp_path):
    from loccheck.cache import content_key

    cache = tmp_path / "cache"
    claim = _claim(known_llama, tmp_path, n=3)
    first = verify(claim, write_report=False, cache_dir=cache, progress=False)
    scores = [p for p in (cache / "fits").rglob("*.json") if "value" in json.loads(p.read_text())["record"]]
    for path in scores:
        entry = json.loads(path.read_text())
        record = {"value": "NaN"}
        path.write_text(json.dumps({"key": entry["key"], "checksum": content_key(record), "record": record}))
    with pytest.warns(LoccheckWarning, match="corrupt"):
        second = verify(claim, write_report=False, cache_dir=cache, progress=False)
    assert second.n_fitted == 0 and second.n_scored == len(scores) - len(claim.all_metrics)  # unedited: testbed
    assert second.payload["tests"] == first.payload["tests"]


def test_refresh_ignores_the_cache(known_llama, tmp_path):
    cache = tmp_path / "cache"
    claim = _claim(known_llama, tmp_path, n=2)
    verify(claim, write_report=False, cache_dir=cache, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = verify(claim, write_report=False, cache_dir=cache, refresh=True, progress=False)
    assert again.n_fitted == 2 + len({tuple(l) for l in sample_null_locations(head_sites(2, 4), size=2, n=2, seed=0)})


def test_adding_a_metric_scores_the_stored_edits_and_refits_nothing(known_llama, tmp_path):
    cache = tmp_path / "cache"
    one = _claim(known_llama, tmp_path, n=4, extra="metrics: [preference_margin]\n")
    first = verify(one, write_report=False, cache_dir=cache, progress=False)
    n_jobs = 2 + 4
    assert first.n_fitted >= 3 and first.n_scored == n_jobs          # one metric per job
    assert "preference_accuracy" not in first.edits[0]["metrics"]
    both = _claim(known_llama, tmp_path, n=4, extra="metrics: [preference_margin, preference_accuracy]\n")
    second = verify(both, write_report=False, cache_dir=cache, progress=False)
    assert second.n_fitted == 0                                       # nothing refitted
    assert second.n_scored == n_jobs                                  # only the new metric scored
    assert second.null_gains == first.null_gains and second.claim_gain == first.claim_gain
    # the restored edits score exactly what a run that fitted them scores
    fresh = verify(both, write_report=False, cache_dir=tmp_path / "fresh", progress=False)
    assert [e["metrics"] for e in fresh.edits] == [e["metrics"] for e in second.edits]
