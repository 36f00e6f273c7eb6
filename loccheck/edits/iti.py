"""ITI's heuristic edit (Li et al. 2023; METHOD.md "The heuristic: ITI probing").

For each chosen head (l, h): u = mean(true activations) - mean(false activations), normalised
(the mass-mean shift); sigma = the standard deviation (ddof=0, numpy's and ITI's reference code's
default) of the activations of ALL examples projected on u. The edit adds alpha * sigma * u to
that head's slice of the input of the layer's output projection, so the residual stream gets
alpha * W^l theta^l (theta^l = the heads' sigma * u concatenated, zero at other heads).

Position policy (the crux). ITI adds the vector at the last token at every generation step; with
a KV cache every generated token is "the last token" once, so every token whose logits are used
was edited. Teacher-forced scoring of an answer must therefore edit every position whose output
predicts an answer token. The policies:

- "answer" (scoring): row i of the batch is edited at positions
  [len(prompt_i) - 1, len(prompt_i) + len(answer_i)): the last prompt token and every answer token,
  including the final one, whose logits are dropped (editing it changes nothing that is scored,
  as attention is causal). The positions come from `set_positions`, which is what
  `loccheck.models.scoring`'s `on_batch` hook calls before every forward:
  `all_pair_logprobs(model, pairs, pad_id, on_batch=edit.set_positions)`.
- "last": only the final non-pad position of each row (the last marked position of the mask
  given to `set_positions`; without a mask, the final position of the tensor, which is the
  final non-pad token only if the batch is not right-padded). This is ITI's reference scoring
  path and its pitfall: in teacher-forced scoring that position's logits are dropped, so the
  answer log-probabilities cannot move. It is also what ITI does in incremental generation.
- "all": every position (pad positions included; they are never scored). Used for generation
  prompts and to check the edit against the same displacement baked into the projection bias.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Annotated, Callable, Iterator, Literal, Sequence

import numpy as np
from pydantic import Field

from loccheck.edits import EditMethod, EditSettings, Fitted, register_edit_method
from loccheck.locations import HeadLoc
from loccheck.render.format import edits_of, fmt, site_noun
from loccheck.schema import Number, Section

POSITIONS = ("answer", "last", "all")


class ITIEditSection(Section):
    method: Literal["iti"] = Field(description="ITI's mass-mean-shift edit, alpha swept on the "
                                               "validation questions for every location alike.")
    alphas: tuple[Annotated[Number, Field(ge=0)], ...] = Field(
        (0.0, 5.0, 10.0, 15.0, 20.0), min_length=1,
        description="Intervention strengths swept on the validation questions; the best is kept, "
                    "the same way for the claim and for every random location.")
    positions: Literal["answer"] = Field(
        "answer", description="Where alpha * sigma * u is added when scoring an answer: the last "
                              "prompt token and every answer token (generation adds it at every new "
                              "last token, so this is the teacher-forced equivalent).")


@dataclass(frozen=True)
class ITIDirections:
    """Per-head ITI statistics for every head of a model.

    A head whose true and false means coincide has no direction: its u is zero and its sigma is
    zero, so editing it is a no-op.
    """
    u: np.ndarray       # (n_layers, n_heads, head_dim), unit mass-mean-shift directions (or 0)
    sigma: np.ndarray   # (n_layers, n_heads), std (ddof=0) over all examples of <act, u>


def iti_directions(acts: np.ndarray, labels: np.ndarray) -> ITIDirections:
    """Mass-mean-shift directions and projected standard deviations for every head at once.

    Parameters
    ----------
    acts : (n_examples, n_layers, n_heads, head_dim) head activations (ITI: at the last token).
    labels : (n_examples,) 1 for a true answer, 0 for a false one; both must occur.

    Returns
    -------
    ITIDirections with u[l, h] = (mean_true - mean_false) / ||mean_true - mean_false|| and
    sigma[l, h] = std(acts[:, l, h] @ u[l, h]) with ddof=0 over ALL examples (both labels), as
    ITI's reference code (`np.std`). Computed in float64.
    """
    acts = np.asarray(acts)
    labels = np.asarray(labels)
    if acts.ndim != 4:
        raise ValueError(f"`acts` must be (n_examples, n_layers, n_heads, head_dim), got shape {acts.shape}")
    if labels.shape != (acts.shape[0],):
        raise ValueError(f"`labels` must have shape ({acts.shape[0]},) to match `acts`, got {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"`labels` must be 0 or 1, got values {np.unique(labels).tolist()}")
    if not (labels == 1).any() or not (labels == 0).any():
        raise ValueError(f"`labels` must contain both true (1) and false (0) examples, "
                         f"got {int((labels == 1).sum())} true and {int((labels == 0).sum())} false")
    acts = acts.astype(np.float64)
    if not np.isfinite(acts).all():
        raise ValueError("`acts` must be finite, got NaN or inf")
    shift = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)     # (L, H, D)
    norm = np.linalg.norm(shift, axis=-1, keepdims=True)              # (L, H, 1)
    u = np.divide(shift, norm, out=np.zeros_like(shift), where=norm > 0)
    proj = np.einsum("nlhd,lhd->nlh", acts, u)                        # (n, L, H)
    return ITIDirections(u=u, sigma=proj.std(axis=0, ddof=0))


class ITIEdit:
    """o_h^l <- o_h^l + alpha * sigma_h^l * u_h^l at the input of W^l (out_proj), for each chosen
    head, at the positions of the policy (module docstring: "answer", "last" or "all").

    The displacement is kept in float32 and cast to the activation's dtype in the hook, so the
    edit runs in float32 and in lower-precision models. alpha = 0 adds exact zeros: a no-op.
    """

    def __init__(self, adapter: Adapter, heads: Sequence[HeadLoc] | None, directions: ITIDirections,
                 alpha: float, positions: str = "answer"):
        import torch

        if positions not in POSITIONS:
            raise ValueError(f"`positions` must be one of {POSITIONS}, got {positions!r}")
        if not math.isfinite(alpha):
            raise ValueError(f"`alpha` must be finite, got {alpha!r}")
        shape = (adapter.n_layers, adapter.n_heads, adapter.head_dim)
        if directions.u.shape != shape or directions.sigma.shape != shape[:2]:
            raise ValueError(f"`directions` must have u {shape} and sigma {shape[:2]} for this model, "
                             f"got u {directions.u.shape} and sigma {directions.sigma.shape}")
        heads = adapter.all_heads() if heads is None else sorted(set(heads))
        adapter.check_inside(heads)
        self.adapter, self.heads, self.alpha, self.positions = adapter, heads, float(alpha), positions
        self.layers = sorted({h.layer for h in heads})
        theta = np.zeros((len(self.layers), adapter.width))             # (n_edit_layers, H * D)
        for h in heads:
            theta[self.layers.index(h.layer), adapter.head_slice(h)] = (
                alpha * directions.sigma[h.layer, h.head] * directions.u[h.layer, h.head])
        self.theta = torch.from_numpy(theta).float()
        self._mask = None                                               # (batch, pos) bool

    @property
    def on_batch(self):
        """Scoring's per-forward hook: the positions to edit (`set_positions`)."""
        return self.set_positions

    def state(self) -> dict[str, np.ndarray]:
        return {"theta": self.theta.numpy().copy()}

    def load_state(self, state: dict) -> "ITIEdit":
        import torch

        self.theta = torch.from_numpy(state["theta"]).clone()
        return self

    @property
    def n_params(self) -> int:
        """0: nothing is trained (u and sigma are statistics, alpha is swept). See `n_coordinates`."""
        return 0

    @property
    def n_coordinates(self) -> int:
        """Coordinates of the out_proj input that the edit moves: len(heads) * head_dim."""
        return len(self.heads) * self.adapter.head_dim

    def set_positions(self, mask: torch.Tensor) -> None:
        """Positions of the next forward, a bool (batch, pos) tensor; pass as scoring's `on_batch`.

        "answer" edits the marked positions, "last" the last marked position of each row, and
        "all" ignores the mask. It applies to every forward until the next call, and is cleared
        when `attached` exits.
        """
        import torch

        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 2:
            raise ValueError(f"`mask` must be a 2-D bool tensor (batch, pos), got "
                             f"{getattr(mask, 'dtype', type(mask))} of shape {getattr(mask, 'shape', None)}")
        if self.positions == "last":
            pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
            last = (mask * pos).amax(1) - 1                              # (batch,) -1: none marked
            rows = torch.nonzero(last >= 0).squeeze(-1)
            mask = torch.zeros_like(mask)
            mask[rows, last[rows]] = True
        self._mask = mask

    def _where(self, o: torch.Tensor) -> torch.Tensor | None:
        """(batch, pos, 1) 0/1 in o's dtype, or None for every position."""
        import torch

        if self.positions == "all":
            return None
        if self._mask is None:
            if self.positions == "answer":
                raise RuntimeError("ITIEdit(positions='answer') has no positions for this forward: "
                                   "pass `on_batch=edit.set_positions` to the scoring function, "
                                   "or call `set_positions(mask)` before the forward")
            where = torch.zeros(o.shape[:2], dtype=torch.bool, device=o.device)
            where[:, -1] = True                                          # "last" without a mask
        else:
            where = self._mask.to(o.device)
            if where.shape != o.shape[:2]:
                raise RuntimeError(f"ITIEdit positions mask has shape {tuple(where.shape)} but the "
                                   f"forward has (batch, pos) = {tuple(o.shape[:2])}: call "
                                   f"`set_positions` for every forward (incremental decoding "
                                   f"needs positions='all' or 'last')")
        return where[..., None].to(o.dtype)

    @contextlib.contextmanager
    def attached(self, model) -> Iterator["ITIEdit"]:
        from loccheck.models.hooks import displaced_inputs

        theta = self.theta.to(next(model.parameters()).device)

        def displacement(row, o):
            delta = theta[row].to(o.dtype)                               # (H * D,)
            where = self._where(o)
            return delta if where is None else where * delta
        try:
            with displaced_inputs(self.adapter, self.layers, displacement):
                yield self
        finally:
            self._mask = None


def sweep_alpha(model, make_edit: Callable[[float], ITIEdit], pairs: Sequence[TokenizedPair],
                alphas: Sequence[float], metric: str, pad_id: int) -> tuple[float, dict[float, float]]:
    """Pick ITI's strength alpha on validation `pairs`.

    For each alpha, `make_edit(alpha)` is attached and `metric` (a name in
    `loccheck.metrics.METRICS`) is computed from `all_pair_logprobs(..., on_batch=edit.set_positions)`
    (the edit's own position policy decides whether the mask is used). alpha = 0 is allowed and
    is the unedited model.

    Returns
    -------
    (best_alpha, {alpha: metric} in the order given). The best is the largest metric; ties (exact
    equality) go to the weakest edit, the smallest |alpha|, then the smaller alpha, so on a grid
    of non-negative alphas a tie goes to the smallest alpha. NaN metrics never win.
    """
    from loccheck.metrics import METRICS, compute_metrics
    from loccheck.models.scoring import all_pair_logprobs

    if metric not in METRICS or METRICS[metric].needs != "pair_logprobs":
        raise ValueError(f"`metric` must be a pair-logprob metric ({', '.join(METRICS)}), got {metric!r}")
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("`alphas` must not be empty")
    if len(set(alphas)) != len(alphas) or not all(math.isfinite(a) for a in alphas):
        raise ValueError(f"`alphas` must be distinct finite numbers, got {alphas}")
    if not pairs:
        raise ValueError("`pairs` must not be empty")
    table: dict[float, float] = {}
    for alpha in alphas:
        edit = make_edit(alpha)
        with edit.attached(model):
            logprobs = all_pair_logprobs(model, pairs, pad_id, on_batch=edit.set_positions)
        table[alpha] = compute_metrics([metric], {"pair_logprobs": logprobs.numpy()})[metric]
    finite = [a for a in alphas if not math.isnan(table[a])]
    if not finite:
        raise ValueError(f"metric {metric!r} is NaN at every alpha in {alphas}")
    sign = 1.0 if METRICS[metric].higher_is_better else -1.0
    best = max(sign * table[a] for a in finite)
    return min((a for a in finite if sign * table[a] == best), key=lambda a: (abs(a), a)), table


@dataclass(frozen=True)
class ITISettings(EditSettings):
    alphas: tuple[float, ...]    # the grid swept on the validation questions
    positions: str               # where the shift is added ("answer")
    metric: str                  # alpha is chosen by the verdict's metric: part of the fit

    def numerics(self) -> tuple[str, ...]:
        return (f"metrics.{self.metric}",)     # its code chooses alpha


def _settings(section: ITIEditSection, *, verdict_metric: str, site_kind: str = "head",
              ceiling: bool = False) -> ITISettings:
    return ITISettings(tuple(section.alphas), section.positions, verdict_metric)


def directions_for(testbed) -> ITIDirections:
    """ITI's directions from the train and validation questions' activations (computed once per
    testbed; the test questions are not part of the data they are computed from)."""
    if "iti_directions" not in testbed.memo:
        from loccheck.models.activations import labelled_activations

        acts = labelled_activations(testbed.loaded, testbed.data.without_test(), testbed.cache_root)
        testbed.memo["iti_directions"] = iti_directions(acts[0], acts[1])
    return testbed.memo["iti_directions"]


def _fit(testbed, settings: ITISettings, location, on_step=None) -> Fitted:
    """The alpha with the best validation metric, the same grid for every location."""
    directions, alphas = directions_for(testbed), list(settings.alphas)
    tried = []

    def make(alpha: float) -> ITIEdit:
        tried.append(alpha)
        if on_step is not None:
            on_step(len(tried), len(alphas), None)
        return ITIEdit(testbed.adapter, location, directions, alpha, positions=settings.positions)

    best, by_alpha = sweep_alpha(testbed.model, make, testbed.validation, alphas, settings.metric,
                                 testbed.pad_id)
    edit = ITIEdit(testbed.adapter, location, directions, best, positions=settings.positions)
    return Fitted(edit, {"alpha": best, "validation_by_alpha": {f"{a:g}": v for a, v in by_alpha.items()}})


def _initial(testbed, settings: ITISettings, location) -> ITIEdit:
    """alpha = 0: the identity, whatever the directions."""
    a = testbed.adapter
    zero = ITIDirections(np.zeros((a.n_layers, a.n_heads, a.head_dim)), np.zeros((a.n_layers, a.n_heads)))
    return ITIEdit(a, location, zero, 0.0, positions=settings.positions)


def _restore(testbed, settings: ITISettings, location, state: dict):
    return _initial(testbed, settings, location).load_state(state)


# --- its part of the report (from result.json alone; matplotlib is imported when it draws) ---

def _report_lines(r: dict) -> list[str]:
    iti = edits_of(r, "iti")
    by_role = {e.get("role"): e for e in iti}
    alphas = [e.get("alpha") for e in iti if e.get("role") == "random"]
    kind = site_noun(r)
    return ["## The ITI edits", "",
            f"`iti` adds alpha * sigma * u (ITI's mass-mean-shift direction, sigma the spread of "
            f"the activations along it) to each {kind}, at the last prompt token and every answer "
            "token when scoring an answer, with alpha picked on the validation questions for each "
            "location alike.", "",
            f"ITI's alpha chosen on validation: claim {fmt(by_role.get('claim', {}).get('alpha'))}, "
            f"whole model {fmt(by_role.get('ceiling', {}).get('alpha'))}, random locations "
            + ", ".join(fmt(a) for a in alphas) + "."]


register_edit_method(EditMethod("iti", ITIEditSection, _settings, _fit, _restore, _initial,
                                "ITI's mass-mean shift, alpha swept on validation",
                                uses_validation=True, report_lines=_report_lines))
