"""`method: rome`: ROME's closed-form rank-one edit (Meng et al. 2022), the heuristic edit of MLP
claims (the role ITI plays for heads), applied to every train fact in turn.

For one fact at MLP layer l: the key k* is the down projection's input at the subject's last
token (from the prompt itself); the value v* = v0 + delta, where delta, added to the layer's MLP
output at that token, is optimised by Adam as ROME's compute_v does: the counterfactual target's
mean token NLL plus `v_weight_decay` * |delta| / |v0|^2 (the norm, as ROME, not its square),
|delta| clamped at `clamp_norm_factor` * |v0| after each step (ROME: 4), stopping once that
total loss is below 0.05 or after `v_steps` passes (the last only evaluates, as ROME's). Then
W <- W + (v* - W k*) (C^-1 k*)^T / (k*^T C^-1 k*), with C = E[k k^T] the uncentered second
moment of the layer's keys over a stated text sample: the questions and answers of TruthfulQA
(`stats_path`, default $LOCCHECK_DATA_DIR/TruthfulQA.csv; the first `stats_tokens` tokens),
which ship with the data and share no text with the facts. That update changes the layer's
output at k* by exactly v* - W k*, and as little as it can elsewhere in the C^-1 metric.

Where loccheck differs from ROME's code: it reads k* from the prompt alone (ROME averages it
over the prompt behind random prefixes), it leaves out ROME's KL term on "{subject} is a" (the
loss is the target's NLL and the weight decay), and C comes from the sample above, not from
Wikipedia text.

Facts are edited one after another, each on the model with the earlier edits (sequential
ROME). At a location of several layers, delta is optimised at the first of them (from there it
can reach the prediction through every later layer; the model's last MLP at the subject's
token feeds nothing) and split in equal shares, one rank-one update per layer, lowest first,
each layer's key read with the fact's updates below it in place (MEMIT's spreading, which
optimises at the last layer instead): each layer adds exactly delta / n at k*. At one layer it
is ROME's update. The whole-model edit spreads over every layer. The edit is stored as its
rank-one factors: per layer, u_i (d_ff) and r_i (d_model) for each fact i.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from pydantic import Field, StrictInt

from loccheck.edits import EditMethod, EditSettings, Fitted, register_edit_method
from loccheck.errors import LoccheckError
from loccheck.render.format import edits_of, fmt
from loccheck.schema import Number, Section

STATS_FILE = "TruthfulQA.csv"
STATS_PIECE = 128          # tokens per text piece the key statistics are collected over
STOP_LOSS = 5e-2           # ROME's compute_v stops once its total loss is below this


class RomeEditSection(Section):
    method: Literal["rome"] = Field("rome", description="ROME's closed-form rank-one edit of each "
                                                        "train fact, in turn (MLP locations, known facts).")
    v_steps: StrictInt = Field(25, ge=1, le=1000, description="Passes optimising each fact's value (ROME's "
                                                              "v_num_grad_steps: the last only evaluates).")
    v_lr: Number = Field(0.5, gt=0, le=100, description="Adam learning rate of the value (ROME: 0.5).")
    v_weight_decay: Number = Field(0.5, ge=0, description="Weight of |delta| / |v0|^2 (ROME: 0.5).")
    clamp_norm_factor: Number = Field(4.0, ge=0, description="|delta| is clamped at this times |v0| after "
                                                             "each step (ROME: 4; 0: no clamp).")
    stats_path: str | None = Field(None, description="Text sample of the key statistics (default: "
                                                     "$LOCCHECK_DATA_DIR/TruthfulQA.csv, its questions "
                                                     "and answers).")
    stats_tokens: StrictInt = Field(20000, ge=100, le=10_000_000, description="Tokens of the sample used.")
    ridge: Number = Field(1e-3, ge=0, description="Added to C's diagonal, as a share of its mean diagonal.")


def stats_file(path: str | None) -> Path:
    """`stats_path`, else $LOCCHECK_DATA_DIR/TruthfulQA.csv (found as every data file is)."""
    from loccheck.data.sources import find_data_file
    from loccheck.errors import DataError
    from loccheck.userfiles import expand_user

    if path is not None:
        return expand_user(path, key="stats_path")
    file, tried = find_data_file(STATS_FILE, None, None)
    if file is None:
        raise DataError("rome needs a text sample for its key statistics (set stats_path, or "
                        f"LOCCHECK_DATA_DIR to a folder holding {STATS_FILE}): " + "; ".join(tried), key="stats_path")
    return file


def stats_texts(file: Path) -> list[str]:
    """The sample's texts: a TruthfulQA-style CSV's questions and answers, else one text per line."""
    import csv
    import io

    from loccheck.data.sources import read_data_text

    text, _ = read_data_text(file)
    if file.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        cells = [r.get(c) or "" for r in rows for c in ("Question", "Best Answer", "Correct Answers",
                                                        "Incorrect Answers")]
        return [t.strip() for cell in cells for t in cell.split(";") if t.strip()]
    return [t.strip() for t in text.splitlines() if t.strip()]


@dataclass(frozen=True)
class StatsSample:
    """The text sample ROME's key statistics are collected over."""
    path: str                    # resolved
    sha256: str                  # of the file: a changed sample is another fit
    tokens: int                  # tokens of it used


@dataclass(frozen=True)
class RomeSettings(EditSettings):
    v_steps: int
    v_lr: float
    v_weight_decay: float
    clamp_norm_factor: float
    stats: StatsSample
    ridge: float


def _settings(section: RomeEditSection, *, verdict_metric: str, site_kind: str = "mlp",
              ceiling: bool = False) -> RomeSettings:
    """The settings of every fit; the text sample is read here, when a claim is inspected, so a
    missing, unreadable or empty one is refused before anything is fitted."""
    from loccheck.cache import file_sha256
    from loccheck.errors import DataError

    file = stats_file(section.stats_path)
    if not file.is_file():
        raise DataError(f"{file} is not a file: rome reads its key statistics from it (set stats_path)",
                        key="stats_path")
    try:
        texts = stats_texts(file)
    except LoccheckError as err:
        raise DataError(err.msg, key="stats_path") from None
    if not texts:
        # no keys would give C = 0, and the ridge alone would be its inverse: refused, not guessed
        raise DataError(f"{file}: no text to collect rome's key statistics from (a TruthfulQA-style "
                        "CSV's questions and answers, else one text per line)", key="stats_path")
    return RomeSettings(section.v_steps, section.v_lr, section.v_weight_decay, section.clamp_norm_factor,
                        StatsSample(str(file.resolve()), file_sha256(file), section.stats_tokens), section.ridge)


def key_statistics(testbed, stats: StatsSample, layers) -> dict[int, np.ndarray]:
    """{layer: C} = E[k k^T] of each layer's down-projection inputs over the sample's tokens
    (computed for every layer in one pass, once per testbed)."""
    import torch

    from loccheck.models.hooks import read_outputs

    memo = testbed.memo.setdefault(("rome_stats", stats), {})
    # every layer in one pass over the sample, the first time any is asked for
    missing = [l for l in range(testbed.adapter.n_layers) if l not in memo] if any(l not in memo for l in layers) else []
    if missing:
        file = Path(stats.path)
        if not file.is_file():
            raise LoccheckError(f"{file}: the text sample of rome's key statistics is not a file", key="edits")
        tok, model = testbed.tokenizer, testbed.model
        ids = [t for text in stats_texts(file) for t in tok(" " + text, add_special_tokens=False).input_ids]
        ids = ids[:stats.tokens]
        if not ids:
            raise LoccheckError(f"{file}: its texts give no token for rome's key statistics", key="edits")
        width = testbed.adapter.mlp_width
        acc = {l: torch.zeros(width, width, dtype=torch.float64) for l in missing}
        device = next(model.parameters()).device

        def collect(row, x, y):
            k = x.detach().reshape(-1, width).double().cpu()
            acc[missing[row]] += k.T @ k
        with torch.no_grad(), read_outputs([testbed.adapter.mlp_out(l) for l in missing], collect):
            for start in range(0, len(ids), STATS_PIECE * 8):
                chunk = ids[start:start + STATS_PIECE * 8]
                rows = [chunk[i:i + STATS_PIECE] for i in range(0, len(chunk), STATS_PIECE)]
                for row in rows:      # a short last piece goes alone: no padding among the keys
                    if len(row) != STATS_PIECE:
                        model(torch.tensor([row], device=device))
                full = [r for r in rows if len(r) == STATS_PIECE]
                if full:
                    model(torch.tensor(full, device=device))
        n = max(1, len(ids))
        for l in missing:
            memo[l] = (acc[l] / n).numpy()
        memo.setdefault("_tokens", len(ids))
    return {l: memo[l] for l in layers}


class RomeEdit:
    """The sum of rank-one updates of each edited layer's down projection: its output gains
    sum_i (u_i . x) r_i, with x the down projection's input."""
    on_batch = None

    def __init__(self, adapter, sites, U=None, R=None):
        import torch

        sites = adapter.sites("mlp") if sites is None else sorted(sites)
        adapter.check_inside(sites)
        self.adapter, self.layers = adapter, [s.layer for s in sites]
        k = len(self.layers)
        device = adapter.device
        self.U = torch.zeros(k, 0, adapter.mlp_width, device=device) if U is None else U.to(device)
        self.R = torch.zeros(k, 0, adapter.model_width, device=device) if R is None else R.to(device)

    @property
    def n_params(self) -> int:
        return int(self.U.numel() + self.R.numel())

    def delta(self, row: int, x, y):
        return (x.float() @ self.U[row].T) @ self.R[row]

    @contextlib.contextmanager
    def attached(self, model) -> Iterator["RomeEdit"]:
        from loccheck.models.hooks import displaced_outputs

        with displaced_outputs([self.adapter.mlp_out(l) for l in self.layers], self.delta):
            yield self

    def add(self, u, r) -> None:
        """One more rank-one update per layer: u (k, d_ff), r (k, d_model)."""
        import torch

        self.U = torch.cat([self.U, u[:, None].to(self.U)], 1)
        self.R = torch.cat([self.R, r[:, None].to(self.R)], 1)

    def state(self) -> dict[str, np.ndarray]:
        return {"U": self.U.detach().cpu().float().numpy(), "R": self.R.detach().cpu().float().numpy()}

    def load_state(self, state: dict) -> "RomeEdit":
        import torch

        return RomeEdit(self.adapter, [self._site(l) for l in self.layers],
                        torch.from_numpy(state["U"]), torch.from_numpy(state["R"]))

    @staticmethod
    def _site(layer: int):
        from loccheck.locations import MlpLoc

        return MlpLoc(layer)


def fact_item(testbed, pair):
    """(prompt ids, the subject's last token, target ids, true attribute ids) of a fact's pair,
    or None when its subject cannot be found among the prompt's tokens."""
    from loccheck.data.known_facts import fact_tokens

    fact = testbed.data.facts.get(pair.prompt)
    tokens = None if fact is None else fact_tokens(testbed.tokenizer, fact, testbed.prompt_format, testbed.system_prompt)
    if tokens is None or not tokens.counterfactual or not tokens.attribute:
        return None
    return tokens.ids, tokens.span[1] - 1, tokens.counterfactual, tokens.attribute


def _fact_items(testbed):
    """(prompt ids, subject's last token, target ids) of each train fact the edit can use."""
    items = (fact_item(testbed, pair) for pair in testbed.data.train)
    return [item[:3] for item in items if item is not None]


def _inputs_at(testbed, layers, ids, position: int) -> dict:
    """{layer: (the down projection's input, its output)} at `position` of one prompt."""
    import torch

    from loccheck.models.hooks import read_outputs

    seen = {}

    def read(row, x, y):
        seen[layers[row]] = (x[0, position].detach(), y[0, position].detach())
    with torch.no_grad(), read_outputs([testbed.adapter.mlp_out(l) for l in layers], read):
        testbed.model(torch.tensor([ids], device=next(testbed.model.parameters()).device))
    return seen


def _value_delta(testbed, layer: int, ids, position: int, target, v0, settings: RomeSettings):
    """delta at `layer`'s MLP output, subject's last token, that makes `target` likely: ROME's
    compute_v loop (its loss, clamp and stop), without its KL term and random prefixes."""
    import torch

    from loccheck.models.hooks import displaced_outputs
    from loccheck.models.prefix import sequence_prefix
    from loccheck.models.scoring import answer_logprobs

    # nothing below the layer changes while delta is optimised: those blocks run once
    prefix = sequence_prefix(testbed.model, testbed.adapter, layer, [tuple(ids) + tuple(target)], testbed.pad_id)
    delta = torch.zeros_like(v0, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=settings.v_lr)
    v0_norm = float(v0.float().norm())
    scale = v0_norm ** 2 or 1.0                               # a dead MLP's output is zero
    max_norm = settings.clamp_norm_factor * v0_norm

    def add(row, x, y):
        out = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
        out[:, position] = delta
        return out
    with displaced_outputs([testbed.adapter.mlp_out(layer)], add):
        for step in range(settings.v_steps):
            nll = -answer_logprobs(testbed.model, [ids], [target], testbed.pad_id, prefix=prefix)[0] / len(target)
            # ROME's weight decay: |delta| / |v0|^2 (the norm, not its square)
            loss = nll + settings.v_weight_decay * delta.norm() / scale
            # ROME stops on the total loss, and its last pass only evaluates
            if loss.item() < STOP_LOSS or step == settings.v_steps - 1:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            if max_norm > 0 and float(delta.detach().norm()) > max_norm:   # ROME's clamp_norm_factor
                with torch.no_grad():
                    delta.mul_(max_norm / delta.norm())
    return delta.detach()


def inverse_statistics(testbed, settings: RomeSettings, layers) -> dict:
    """{layer: (C + ridge)^-1} in float32, each inverted once per testbed."""
    import torch

    stats = key_statistics(testbed, settings.stats, layers)
    memo = testbed.memo.setdefault(("rome_inverse", settings.stats, settings.ridge), {})
    for l in layers:
        if l not in memo:
            C = torch.from_numpy(stats[l])
            scale = float(C.diagonal().mean()) or 1.0          # a dead MLP's keys are all zero
            C = C + settings.ridge * scale * torch.eye(C.shape[0], dtype=C.dtype)
            memo[l] = torch.linalg.inv(C).float()
    return {l: memo[l] for l in layers}


def edit_fact(testbed, edit: RomeEdit, inverse: dict, ids, position: int, target, settings: RomeSettings):
    """ROME's update for one fact, added to `edit` (computed with the edit as it is); returns
    delta, what the update adds to the MLP output at the subject's last token (in equal shares
    over the edit's layers)."""
    import torch

    layers = edit.layers
    with edit.attached(testbed.model):
        seen = _inputs_at(testbed, layers[:1], ids, position)
        # optimised at the first layer: the last one may be too late to reach the prediction (the
        # model's final MLP at the subject's token feeds nothing)
        delta = _value_delta(testbed, layers[0], ids, position, target, seen[layers[0]][1], settings)
    k_dim = edit.U.shape[-1]
    edit.add(torch.zeros(len(layers), k_dim), torch.zeros(len(layers), delta.numel()))
    share = delta.cpu() / len(layers)
    for row, l in enumerate(layers):
        # each layer's key is read with this fact's updates below it in place (as MEMIT does):
        # a key read before them would give the higher layers more than their share
        if row:
            with edit.attached(testbed.model):
                seen = _inputs_at(testbed, [l], ids, position)
        k = seen[l][0].float().cpu()
        c_inv_k = inverse[l] @ k
        norm = float(k @ c_inv_k)
        # a layer whose key is zero (a dead MLP) cannot be written at this token: no update
        if norm > 0:
            with torch.no_grad():
                edit.U[row, -1] = (c_inv_k / norm).to(edit.U)
                edit.R[row, -1] = share.to(edit.R)
    return delta


def _cannot_edit(adapter) -> str | None:
    if adapter.experts:
        return (f"rome updates an MLP's down projection, and a {adapter.family} model's MLP sites are "
                "mixtures of experts, which have none; use method: optimal")
    return None


def _fit(testbed, settings: RomeSettings, location, on_step=None) -> Fitted:
    edit = RomeEdit(testbed.adapter, location)
    inverse = inverse_statistics(testbed, settings, edit.layers)
    items = _fact_items(testbed)
    for n, (ids, position, target) in enumerate(items):
        if on_step is not None:
            on_step(n + 1, len(items), None)
        edit_fact(testbed, edit, inverse, ids, position, target, settings)
    tokens = testbed.memo[("rome_stats", settings.stats)]["_tokens"]
    return Fitted(edit, {"n_facts_edited": len(items), "stats_tokens": tokens})


def _initial(testbed, settings: RomeSettings, location) -> RomeEdit:
    return RomeEdit(testbed.adapter, location)


def _restore(testbed, settings: RomeSettings, location, state: dict) -> RomeEdit:
    return _initial(testbed, settings, location).load_state(state)


# --- its part of the report (from result.json alone; matplotlib is imported when it draws) ---

def _report_lines(r: dict) -> list[str]:
    rome = edits_of(r, "rome")
    claim = next((e for e in rome if e.get("role") == "claim"), {})
    return ["## The ROME edits", "",
            f"`rome` applies ROME's closed-form rank-one update (Meng et al. 2022) for each of the "
            f"{fmt(claim.get('n_facts_edited'))} train facts in turn, at every location alike: the key is "
            "the down projection's input at the subject's last token, the value is optimised to make the "
            "counterfactual target likely, and the update is weighted by the inverse of the keys' second "
            f"moment over {fmt(claim.get('stats_tokens'))} tokens of the stated text sample. At a location "
            "of several layers the value is split in equal shares, one rank-one update per layer "
            "(MEMIT's spreading); the whole-model edit spreads over every layer."]


register_edit_method(EditMethod("rome", RomeEditSection, _settings, _fit, _restore, _initial,
                                "ROME's closed-form rank-one edit of each train fact in turn",
                                site_kinds=("mlp",), datasets=("known_facts",), report_lines=_report_lines,
                                cannot_edit=_cannot_edit))
