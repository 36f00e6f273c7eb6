"""Known facts as a behaviour (dataset: known_facts): counterfactual targets, the split by
subject, the filter of facts the model knows, and bad files. No torch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from loccheck.data.behavior import load_behavior
from loccheck.errors import DataError
from loccheck.data.known_facts import read_known_facts


def _facts(n_relations: int = 3, per_relation: int = 6) -> list[dict]:
    out = []
    for r in range(n_relations):
        for i in range(per_relation):
            subject = f"Subject{r}x{i}"
            out.append({"known_id": len(out), "subject": subject, "attribute": f"Attr{r}-{i % 4}",
                        "template": "{} relates to", "prediction": " something",
                        "prompt": f"{subject} relates to", "relation_id": f"P{r}"})
    return out


def _write(tmp_path: Path, records) -> Path:
    path = tmp_path / "known_1000.json"
    path.write_text(json.dumps(records))
    return path


def test_counterfactual_is_another_attribute_of_the_same_relation(tmp_path):
    records = _facts()
    facts = read_known_facts(tmp_path, json.dumps(records), seed=0)
    assert len(facts) == len(records)
    attrs = {r["relation_id"]: {x["attribute"] for x in records if x["relation_id"] == r["relation_id"]}
             for r in records}
    for f in facts:
        assert f.counterfactual != f.attribute and f.counterfactual in attrs[f.relation]
    # drawn per fact from (seed, known_id) among the relation's sorted attributes: the file's
    # order does not move a fact's target
    backwards = read_known_facts(tmp_path, json.dumps(records[::-1]), seed=0)
    assert [f.counterfactual for f in backwards[::-1]] == [f.counterfactual for f in facts]
    other = read_known_facts(tmp_path, json.dumps(records), seed=1)
    assert [f.counterfactual for f in other] != [f.counterfactual for f in facts]


def test_a_relation_with_one_attribute_has_no_counterfactual(tmp_path):
    records = _facts()
    lonely = dict(records[0], known_id=99, subject="Lonely", prompt="Lonely relates to", relation_id="P9")
    facts = read_known_facts(tmp_path, json.dumps(records + [lonely]), seed=0)
    assert "Lonely" not in {f.subject for f in facts}


def test_pairs_prefer_the_counterfactual_and_split_by_subject(tmp_path):
    path = _write(tmp_path, _facts())
    data = load_behavior(dataset="known_facts", path=str(path), base_dir=None, split=(0.5, 0.0, 0.5))
    pairs = data.train + data.test
    assert len(pairs) == 18 and {p.group for p in data.train}.isdisjoint({p.group for p in data.test})
    for p in pairs:
        fact = data.facts[p.prompt]
        assert (p.chosen, p.rejected, p.group) == (fact.counterfactual, fact.attribute, fact.subject)


def test_the_filter_keeps_known_facts_until_max_questions(tmp_path):
    path = _write(tmp_path, _facts())
    seen = []

    def keep(pairs):                  # "knows" the facts whose attribute ends in 0 or 1
        seen.extend(pairs)
        return [p.rejected[-1] in "01" for p in pairs]
    data = load_behavior(dataset="known_facts", path=str(path), base_dir=None, split=(0.5, 0.0, 0.5),
                         max_questions=6, keep=keep, keep_rule="ends in 0 or 1")
    kept = data.train + data.test
    assert len(kept) == 6 and all(p.rejected[-1] in "01" for p in kept)
    # the filter saw one chunk (all 18); the count is of the facts walked, in shuffled order,
    # until 6 known ones were found
    assert len(seen) == 18 and data.kept == {"rule": "ends in 0 or 1", "checked": 8, "kept": 6}
    with pytest.raises(DataError, match="none of 18 pairs is kept"):
        load_behavior(dataset="known_facts", path=str(path), base_dir=None, split=(0.5, 0.0, 0.5),
                      keep=lambda pairs: [False] * len(pairs), keep_rule="nothing")


def test_known_facts_are_found_in_the_data_folder(monkeypatch, tmp_path):
    _write(tmp_path, _facts())
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(tmp_path))
    data = load_behavior(dataset="known_facts", path=None, base_dir=None, split=(0.5, 0.0, 0.5))
    assert data.source == str(tmp_path / "known_1000.json")
    monkeypatch.delenv("LOCCHECK_DATA_DIR")
    with pytest.raises(DataError, match=r"known facts \(known_1000.json\) not found: LOCCHECK_DATA_DIR is not set"):
        load_behavior(dataset="known_facts", path=None, base_dir=None)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("attribute"), "item 2: 'attribute' must be a non-empty string"),
    (lambda r: r.update(prompt="no subject here"), "item 2: its prompt does not contain its subject"),
    (lambda r: r.update(known_id=-1), "item 2: 'known_id' must be a non-negative integer"),
    (lambda r: r.update(relation_id=7), "item 2: 'relation_id' must be a non-empty string"),
])
def test_bad_facts_name_the_file_and_item(tmp_path, change, message):
    records = _facts()
    change(records[2])
    path = _write(tmp_path, records)
    with pytest.raises(DataError, match=message) as err:
        load_behavior(dataset="known_facts", path=str(path), base_dir=None)
    assert str(path) in err.value.msg


def test_the_real_known_facts(data_dir):
    data = load_behavior(dataset="known_facts", path=str(data_dir / "known_1000.json"), base_dir=None,
                         split=(0.5, 0.0, 0.5))
    # 1209 facts, 1195 subjects; the one fact of relation P190 has no counterfactual
    assert data.n_questions_read == 1194 and len(data.train + data.test) == 1207
    assert all(data.facts[p.prompt].subject in p.prompt for p in data.train)
