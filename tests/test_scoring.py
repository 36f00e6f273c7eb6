"""Answer log-probabilities against a direct computation from the full logits."""
import pytest
import torch

from loccheck.testing import tiny_model
from loccheck.prompts import TokenizedPair
from loccheck.scoring import all_pair_logprobs, answer_logprobs, pair_logprobs

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
