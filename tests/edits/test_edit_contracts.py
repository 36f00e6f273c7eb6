"""The contract every registered edit method keeps, driven by the registry: a method added to
`loccheck.edits` is tested here without a line of new test code. Its edit starts as the identity
(the model's outputs bit for bit), leaves the model as it was after fitting, and is rebuilt from
its stored parameters to score exactly what the fit scored."""
from __future__ import annotations

import numpy as np
import pytest

from loccheck.edits import EDIT_METHODS
from loccheck.metrics import METRICS

pytestmark = pytest.mark.slow   # they fit real edits on a tiny model (torch)


def _logprobs(testbed, on_batch=None):
    from loccheck.models.scoring import all_pair_logprobs

    return all_pair_logprobs(testbed.model, testbed.test, testbed.pad_id, on_batch=on_batch).numpy()


def _outputs(testbed):
    """Test-pair log-probabilities and the full logits of one sequence: bit-for-bit evidence."""
    import torch

    ids = torch.tensor([list(testbed.test[0].prompt) + list(testbed.test[0].chosen)])
    with torch.no_grad():
        logits = testbed.model(input_ids=ids).logits
    return _logprobs(testbed), logits.numpy()


def _settings(claim, testbed, name, ceiling=False):
    section = next(e for e in claim.edits if e.method == name)
    return EDIT_METHODS[name].settings(section, verdict_metric=claim.verdict.metric, site_kind=claim.site_kind,
                                       ceiling=ceiling)


def _testbed_for(method, contract_testbed, contract_facts_testbed):
    """The head testbed for methods that edit heads on any data, else the facts testbed."""
    if "head" in method.site_kinds and method.datasets is None:
        return contract_testbed
    return contract_facts_testbed


@pytest.mark.parametrize("name", list(EDIT_METHODS))
@pytest.mark.parametrize("where", ["location", "ceiling"])
def test_edit_starts_as_the_identity_and_detaches_cleanly(contract_testbed, contract_facts_testbed, name, where):
    method = EDIT_METHODS[name]
    claim, testbed = _testbed_for(method, contract_testbed, contract_facts_testbed)
    location = claim.location.parsed if where == "location" else None
    settings = _settings(claim, testbed, name, ceiling=where == "ceiling")
    before = _outputs(testbed)
    edit = method.initial(testbed, settings, location)
    # Bit for bit against the unedited model scored the same way: an edit that scores through
    # `on_batch` is scored unpacked, other arithmetic than the packed pairs of `before`, whose
    # rounding differs with the CPU's kernels; the same operations in the same order do not.
    same_way = before[0] if edit.on_batch is None else _logprobs(testbed, on_batch=lambda mask: None)
    with edit.attached(testbed.model):
        lp = _logprobs(testbed, on_batch=edit.on_batch)
    assert np.array_equal(lp, same_way), f"{name}: the initial edit is not the identity"
    fitted = method.fit(testbed, settings, location)
    after = _outputs(testbed)
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), f"{name}: the model changed"
    # the stored parameters rebuild the same edit: a later metric scores what the fit scored
    with fitted.edit.attached(testbed.model):
        scored = testbed.score(list(METRICS), on_batch=fitted.edit.on_batch)
    restored = method.restore(testbed, settings, location, fitted.edit.state())
    with restored.attached(testbed.model):
        assert testbed.score(list(METRICS), on_batch=restored.on_batch) == scored
    assert all(a.dtype == np.float32 for a in fitted.edit.state().values())
