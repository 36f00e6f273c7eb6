"""Answer log-probabilities against a direct computation from the full logits."""
import pytest
import torch

from loccheck.testing import tiny_model
from loccheck.data.prompts import TokenizedPair
from loccheck.models.scoring import all_pair_logprobs, answer_logprobs, pair_logprobs

pytestmark = pytest.mark.slow   # log-probabilities of tiny torch models (torch)


def _direct(model, prompt, answer):
    ids = torch.tensor([list(prompt) + list(answer)])
    logp = model(ids).logits[0].log_softmax(-1)
    return sum(logp[len(prompt) - 1 + k, tok].item() for k, tok in enumerate(answer))


def test_answer_logprobs_match_full_logits_with_padding(family_model):
    _, model = family_model
    prompts = [(1, 5, 6, 7), (1, 9), (1, 4, 4, 4, 4, 4)]
    answers = [(10, 11), (12, 13, 14, 15), (16,)]               # different lengths: padding
    got = answer_logprobs(model, prompts, answers, pad_id=0)
    expected = [_direct(model, p, a) for p, a in zip(prompts, answers)]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-4)


def test_pair_logprobs_order_and_batching():
    model = tiny_model("llama")
    pairs = [TokenizedPair((1, 5, 6), (7, 8), (9,)), TokenizedPair((1, 3), (4,), (5, 6, 7)),
             TokenizedPair((1, 2, 3, 4, 5), (6,), (7,))]
    one = pair_logprobs(model, pairs, pad_id=0)
    assert one.shape == (3, 2)
    assert abs(one[1, 1].item() - _direct(model, (1, 3), (5, 6, 7))) < 1e-4
    batched = all_pair_logprobs(model, pairs, pad_id=0, batch_size=2)   # sorted by length inside
    assert torch.allclose(batched.float(), one, atol=1e-5)


def test_the_vocabulary_projection_runs_in_float32_for_low_precision_weights():
    from loccheck.models.scoring import float32_logits

    torch.manual_seed(0)
    head = torch.nn.Linear(64, 1000, bias=False).to(torch.bfloat16)
    hidden = (torch.randn(5, 64) * 4).to(torch.bfloat16)
    logits = float32_logits(head, hidden)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, hidden.float() @ head.weight.float().T)
    assert not torch.equal(logits, head(hidden).float())      # bf16 would have rounded them


@pytest.mark.slow
def test_a_bfloat16_model_gains_what_float32_gains(known_llama, tmp_path):
    """The same fitted edit scored on the bfloat16 and the float32 copy of a tiny model: the
    gains agree to 1% (measured: 4.047 in float32, 4.038 in bfloat16; 4.026 when the edit was
    rounded to bfloat16 before it was added and the projection ran in bfloat16)."""
    from loccheck.run.testbed import prepare_testbed
    from loccheck.claim import parse_claim
    from loccheck.edits import EDIT_METHODS
    from loccheck.testing import claim_text
    from loccheck.run.verify import edit_jobs

    model_dir, pairs = known_llama
    text = claim_text(model_dir, pairs, ["L1H2"], n=19)

    def testbed(dtype):
        claim = parse_claim(text.replace("device: cpu", f"device: cpu, dtype: {dtype}"), path=tmp_path / "c.yaml")
        return claim, prepare_testbed(claim, tmp_path / "cache")

    claim, full = testbed("float32")
    _, half = testbed("bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    method = EDIT_METHODS["optimal"]
    job = edit_jobs(claim, full.key, claim.location.parsed, [])[0]
    state = method.fit(full, job.settings, job.location).edit.state()

    def gain(b):
        base = b.score(["preference_margin"])["preference_margin"]
        with method.restore(b, job.settings, job.location, state).attached(b.model):
            return b.score(["preference_margin"])["preference_margin"] - base

    g32, g16 = gain(full), gain(half)
    assert g32 > 1
    assert g16 == pytest.approx(g32, rel=0.01)


def test_greedy_matches_is_greedy_decoding(family_model):
    """A teacher-forced argmax check agrees with greedy decoding by `generate`: the model's own
    greedy continuation matches, and the same with its last token changed does not."""
    from loccheck.models.scoring import greedy_matches

    _, model = family_model
    prompts = [(1, 5, 6, 7), (1, 9), (1, 4, 4, 4, 4, 4), (1, 30, 31)]
    greedy = []
    for p in prompts:
        out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=3, do_sample=False, pad_token_id=0)
        greedy.append(tuple(out[0, len(p):].tolist()))
    wrong = [g[:-1] + ((g[-1] + 1) % 100,) for g in greedy]
    got = greedy_matches(model, prompts * 2, greedy + wrong, pad_id=0, batch_size=3)
    assert got == [True] * 4 + [False] * 4
