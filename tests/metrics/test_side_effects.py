"""Side effects on unrelated texts: KL is exactly 0 for the identity edit, positive for a fitted
one and equal to a direct computation from full logits; the texts are found and read as the
claim says, and are part of every side-effect score's cache key."""
from __future__ import annotations

import json

import pytest

from loccheck.data.side_texts import load_side_texts
from loccheck.errors import DataError

TEXTS = ["the river runs to the sea", "a stone in the garden", "clouds over the maple tree",
         "an apple fell down", "x"]


def test_texts_from_each_kind_of_file(tmp_path, monkeypatch):
    plain = tmp_path / "texts.txt"
    plain.write_text("\n".join(TEXTS) + "\n\n")
    assert load_side_texts(str(plain), base_dir=None, n_texts=2).texts == tuple(TEXTS[:2])
    lines = tmp_path / "texts.jsonl"
    lines.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    assert load_side_texts("texts.jsonl", base_dir=tmp_path, n_texts=99).texts == tuple(TEXTS)
    facts = tmp_path / "known_1000.json"
    facts.write_text(json.dumps([{"template": "{} is located in the continent", "subject": "Vinson Massif",
                                  "prediction": " of Antarctica.<|endoftext|>", "prompt": "ignored"}]))
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(tmp_path))
    got = load_side_texts(None, base_dir=None, n_texts=5)
    assert got.texts == ("Vinson Massif is located in the continent of Antarctica.",)
    assert got.source == str(facts) and len(got.sha256) == 64


def test_missing_texts_name_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCCHECK_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="set side_effects.path") as err:
        load_side_texts(None, base_dir=None, n_texts=5)
    assert err.value.key == "side_effects.path"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "no"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected an object with a string 'text'"):
        load_side_texts(str(bad), base_dir=None, n_texts=5)


def test_the_shared_known_facts_load(data_dir, monkeypatch):
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(data_dir))
    got = load_side_texts(None, base_dir=None, n_texts=100)
    assert len(got.texts) == 100 and all(t and "<|endoftext|>" not in t for t in got.texts)


def test_braces_in_texts_are_text(tmp_path):
    """A text holding `{subject}` (or any brace) is literal text; a fact's template fills its
    first `{}` only, and a template without one is a one-line error naming the file and item."""
    plain = tmp_path / "texts.txt"
    plain.write_text("{subject} is {0} and {\n")
    assert load_side_texts(str(plain), base_dir=None, n_texts=5).texts == ("{subject} is {0} and {",)
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps([{"template": "{} said {subject} {}", "subject": "Ann", "prediction": " {x}"}]))
    assert load_side_texts(str(facts), base_dir=None, n_texts=5).texts == ("Ann said {subject} {} {x}",)
    facts.write_text(json.dumps([{"template": "{subject} is a", "subject": "Ann", "prediction": " cat"}]))
    with pytest.raises(DataError, match=r"facts.json: item 0: its template has no \{\} for the subject"):
        load_side_texts(str(facts), base_dir=None, n_texts=5)


def test_texts_pass_over_the_facts_named(tmp_path):
    facts = tmp_path / "known_1000.json"
    facts.write_text(json.dumps([{"template": "{} is in", "subject": s, "prediction": " Asia"}
                                 for s in ("Ann", "Bo", "Cy", "Di")]))
    got = load_side_texts(str(facts), base_dir=None, n_texts=2, exclude_subjects={"Bo"})
    assert got.texts == ("Ann is in Asia", "Cy is in Asia") and got.n_excluded == 1
    plain = tmp_path / "texts.txt"
    plain.write_text("Ann is in Asia.\nBo is in the city of Rome.\n")
    got = load_side_texts(str(plain), base_dir=None, n_texts=5, exclude_prompts={"Bo is in the city of"})
    assert got.texts == ("Ann is in Asia.",) and got.n_excluded == 1
    with pytest.raises(DataError, match=r"no texts for side effects that is not one of the claim's own "
                                        r"facts \(4 are\)"):
        load_side_texts(str(facts), base_dir=None, n_texts=2, exclude_subjects={"Ann", "Bo", "Cy", "Di"})


@pytest.mark.slow
def test_a_known_facts_claim_measures_side_effects_on_other_facts(tmp_path, monkeypatch, one_torch_thread):
    """The default side-effect texts are the data folder's known_1000.json, which a known_facts
    claim draws its behaviour from: every fact of the claim (train, validation and test) is
    passed over, and the texts are the file's other facts, in file order."""
    from loccheck.run.testbed import prepare_testbed
    from loccheck.claim import parse_claim
    from loccheck.testing import char_tokenizer, tiny_model, write_known_facts

    model = tiny_model("gpt_neox", n_layers=4)
    model.save_pretrained(tmp_path / "m")
    char_tokenizer().save_pretrained(tmp_path / "m")
    file = write_known_facts(tmp_path / "known_1000.json", model, n_facts=16)
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(tmp_path))
    claim = parse_claim(f"claim: x\nmodel: {{name: '{tmp_path / 'm'}', device: cpu}}\n"
                        "behavior: {dataset: known_facts, max_questions: 9, "
                        "split: {train: 0.4, validation: 0.2, test: 0.4}}\n"
                        "location: {sites: [L0M]}\nmetrics: [preference_margin, kl]\n",
                        path=tmp_path / "c.yaml")
    testbed = prepare_testbed(claim, tmp_path / "cache")
    own = {testbed.data.facts[p.prompt].subject for split in (testbed.data.train, testbed.data.validation,
                                                            testbed.data.test) for p in split}
    assert len(own) == 9 and testbed.data.validation                 # facts in every split
    records = json.loads(file.read_text())
    others = [r["template"].replace("{}", r["subject"]) + r["prediction"] for r in records
              if r["subject"] not in own]
    tok = testbed.tokenizer
    assert testbed.side == tuple(tuple(tok(t).input_ids) for t in others)
    assert testbed.side_identity["n_texts"] == 16 - 9 and testbed.side_identity["n_excluded"] == 9


@pytest.mark.slow
def test_kl_is_zero_for_the_identity_and_matches_full_logits(known_llama, tmp_path):
    import torch

    from loccheck.run.testbed import prepare_testbed
    from loccheck.claim import parse_claim
    from loccheck.edits import EDIT_METHODS
    from loccheck.testing import claim_text
    from loccheck.run.verify import edit_jobs

    model_dir, pairs = known_llama
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    text = claim_text(model_dir, pairs, ["L1H2"], n=19) + (
        f"side_effects: {{path: '{texts}'}}\nmetrics: [preference_margin, kl, log_likelihood]\n")
    claim = parse_claim(text, path=tmp_path / "c.yaml")
    testbed = prepare_testbed(claim, tmp_path / "cache")
    assert len(testbed.side) == 4                                  # "x" is a single token
    method = EDIT_METHODS["optimal"]
    job = edit_jobs(claim, testbed.key, claim.location.parsed, [])[0]
    base = testbed.score(["kl", "log_likelihood"])
    assert base["kl"] == 0.0
    with method.initial(testbed, job.settings, job.location).attached(testbed.model):
        same = testbed.score(["kl", "log_likelihood"])
    assert same == base                                          # the identity edit, bit for bit
    fitted = method.fit(testbed, job.settings, job.location).edit
    with fitted.attached(testbed.model):
        moved = testbed.score(["kl", "log_likelihood"])
    assert moved["kl"] > 1e-3

    kl, n = 0.0, 0                                               # one text at a time, full logits
    with torch.no_grad():
        for ids in testbed.side:
            x = torch.tensor([ids])
            p = testbed.model(x).logits[0, :-1].float().log_softmax(-1)
            with fitted.attached(testbed.model):
                q = testbed.model(x).logits[0, :-1].float().log_softmax(-1)
            kl += float((p.exp() * (p - q)).sum())
            n += len(ids) - 1
    assert moved["kl"] == pytest.approx(kl / n, rel=1e-4)

    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(TEXTS)))
    elsewhere = prepare_testbed(parse_claim(text.replace(str(texts), str(other)), path=tmp_path / "c.yaml"),
                              tmp_path / "cache")
    assert elsewhere.key == testbed.key                            # the same fits...
    assert elsewhere.input_identity("side_texts") != testbed.input_identity("side_texts")   # ...other scores
    assert job.score_key("kl", testbed.input_identity("side_texts")) != job.score_key(
        "kl", elsewhere.input_identity("side_texts"))
