"""`method: optimal`: the optimal localized edit (METHOD.md), fitted by preference optimisation.

At a location of MLP sites it is rank-1 LoRA on each site's down projection (`MlpEdit`), and
its ceiling the same on every layer. At neurons it is the heads' masked edit at the down
projection's input, its hidden units (`NeuronEdit`), its ceiling every unit of every layer. At a
subspace of the residual stream after a layer, or at SAE latents (the span of their decoder
rows), it writes only inside that span, h <- h + <a, h> U^T c (`SubspaceEdit`), and its ceiling is
the same edit with U the identity: the whole stream at that layer. Any of them may act at the
answer's positions only (`positions: answer`, `AtPositions`).

At a location of heads it is the rank-1 LoRA reparameterized so it can be restricted to those
heads: o^l <- o^l + <a^l, o^l> (m^l * b^l) at the input of W^l (o_proj), m^l masking the
location's heads in layer l. Its ceiling, the whole-model edit, is the same edit with every
head unmasked (METHOD.md: "equivalently the same reparameterization with every head
unmasked"); rank-1 LoRA with peft on every output projection (`FullLoraEdit`) reaches the same
functions and is kept as an independent cross-check (tests/edits/test_training.py). Every edit
starts from the identity (b = 0) with the same random read vector a for each layer, drawn once
from the edit seed, and gets the same data, order, convergence rule and cap. The claim and its
null share `learning_rate`; the ceiling has its own, `ceiling_learning_rate`, which no claim's
size changes, so every claim on the same model, data and settings gets the same ceiling.

Every location's edit is a special case of the ceiling's (its rows, masked, in the ceiling's
layers: `absorb`), so the ceiling's training objective can be no worse than any location's:
when a location's edit fits better, the ceiling is continued from it (`loccheck.run.verify`).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Literal, Sequence

import numpy as np
from pydantic import AfterValidator, Field, StrictInt

from loccheck.edits import EditMethod, EditSettings, Fitted, register_edit_method
from loccheck.locations import RESIDUAL_KINDS, MlpLoc
from loccheck.render.format import edit_name, edits_of, fmt, site_noun, sites, table
from loccheck.schema import Number, Section, Seed

if TYPE_CHECKING:
    from loccheck.edits.training import TrainConfig

MAX_LEARNING_RATE = 1e6


def _adamw_rate(value: float) -> float:
    if value > MAX_LEARNING_RATE:
        raise ValueError(f"{value:g} is more than {MAX_LEARNING_RATE:g}: AdamW moves each parameter by "
                         "about the rate per step, so a rate this large only overflows float32")
    return value


class OptimalEditSection(Section):
    method: Literal["optimal"] = Field(
        "optimal", description="The rank-1 edit restricted to the location, fitted by preference "
                               "optimisation until it converges; its ceiling is the same edit with "
                               "every head unmasked.")
    objective: Literal["ipo", "dpo"] = Field("ipo", description="Preference objective the edit is trained with.")
    tau: Number = Field(0.1, gt=0, description="IPO regularization strength.")
    beta: Number = Field(0.1, gt=0, description="DPO inverse temperature.")
    batch_size: StrictInt = Field(4, ge=1, description="Preference pairs per step.")
    learning_rate: Annotated[Number, AfterValidator(_adamw_rate)] = Field(
        5e-4, gt=0, description="Learning rate of edits at locations of the claim's size (the claim "
                                "and the null); at most 1e6.")
    ceiling_learning_rate: Annotated[Number, AfterValidator(_adamw_rate)] = Field(
        1e-4, gt=0, description="Learning rate of the whole-model edit (the ceiling), the same whichever "
                                "claim asks for it (the paper used 1e-4 for all heads of Alpaca-7B, 5e-4 "
                                "for 16, 2e-3 for one); at most 1e6.")
    weight_decay: Number = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: Number = Field(0.0, ge=0, lt=1, description="Share of the first epoch's steps with linear warmup.")
    init_std: Number = Field(0.01, gt=0, description="Std of the random init of the LoRA 'a' vector.")
    read: Literal["all", "location"] = Field("all", description="Edit reads from all of the layer's sites (every head, "
                                                               "hidden unit or direction of the stream) or only the location's.")
    positions: Literal["all", "answer"] = Field(
        "all", description="Token positions the edit acts at: every position, or the prompt's last token "
                           "and every answer token (as ITI edits); 'answer' is trained on unpacked "
                           "pairs (each prompt computed for both answers), about twice the cost.")
    max_epochs: StrictInt = Field(10, ge=1, description="Cap on passes over the training pairs; an edit "
                                                        "that has not converged by then is reported capped.")
    convergence_tol: Number = Field(0.02, gt=0, lt=1, description=(
        "Converged when an epoch improves the whole-training-set objective by at most this share "
        "of the improvement made so far, or the objective is within this share of its optimum."))
    seed: Seed = Field(0, description="Seed of edit initialization and batch order.")


@dataclass(frozen=True)
class OptimalSettings(EditSettings):
    train: TrainConfig           # how it is trained (objective, rate, budget, convergence, seed)
    read: str                    # "all" or "location"
    init_std: float
    site_kind: str               # "head", "mlp", "neuron", "subspace" or "latent"
    positions: str = "all"       # "all", or "answer": the prompt's last token and the answer's


def _settings(section: OptimalEditSection, *, verdict_metric: str, site_kind: str = "head",
              ceiling: bool = False) -> OptimalSettings:
    """One procedure for every location: the same settings; the ceiling's own learning rate,
    which does not depend on the claim (nor, then, does its cache key)."""
    from loccheck.edits.training import TrainConfig

    train = TrainConfig(objective=section.objective, tau=section.tau, beta=section.beta,
                        batch_size=section.batch_size,
                        learning_rate=section.ceiling_learning_rate if ceiling else section.learning_rate,
                        weight_decay=section.weight_decay, warmup_ratio=section.warmup_ratio,
                        max_epochs=section.max_epochs, convergence_tol=section.convergence_tol,
                        seed=section.seed)
    return OptimalSettings(train, section.read, section.init_std, site_kind, section.positions)


def initial_read_vectors(adapter, seed: int, init_std: float, kind: str = "head"):
    """(n_layers, read width) initial a^l, the read width being all heads' (n_heads * head_dim),
    the MLP's hidden size (MLP layers, neurons) or the residual stream's (subspaces, SAE
    latents); row l is the same whatever else is edited."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    width = {"head": adapter.width, "mlp": adapter.mlp_width, "neuron": adapter.mlp_width}.get(
        kind, adapter.model_width)
    return torch.randn(adapter.n_layers, width, generator=gen) * init_std


def _device(adapter):
    return adapter.device


class _RankOneEdit:
    """Parameters a (read) and b (write), one row per edited layer."""
    on_batch = None

    def trainable(self) -> list:
        return [self.a, self.b]

    def state(self) -> dict[str, np.ndarray]:
        return {"a": self.a.detach().cpu().numpy(), "b": self.b.detach().cpu().numpy()}

    def load_state(self, state: dict):
        import torch

        with torch.no_grad():
            self.a.copy_(torch.from_numpy(state["a"]))
            self.b.copy_(torch.from_numpy(state["b"]))
        return self

    def effective_rows(self, row: int):
        """(a, b) of one edited layer as the edit uses them (masked)."""
        return self.a[row], self.b[row]

    def absorb(self, other: "_RankOneEdit") -> "_RankOneEdit":
        """Start from `other`, an edit of a location inside this one's: its rows, masked as it
        uses them, in this edit's layers; this edit's other layers keep b = 0. The two compute
        the same function (a zero write adds exactly nothing)."""
        import torch

        with torch.no_grad():
            for row, layer in enumerate(other.layers):
                a, b = other.effective_rows(row)
                self.a[self.layers.index(layer)] = a
                self.b[self.layers.index(layer)] = b
        return self


class _MaskedInputEdit(_RankOneEdit):
    """o^l <- o^l + <a^l, o^l> (m^l * b^l) at the input o^l of a projection of layer l, for each
    edited layer l: the input of the attention output projection (heads), or of the MLP's down
    projection (neurons, its hidden units). m^l masks the coordinates of the location's sites in
    layer l, so b is zero outside them: the per-site intervention vectors summed into one write,
    which W^l maps to exactly the reparameterized LoRA's write vector. With `read="location"`, a^l
    is masked the same way (it reads only the location's sites). Every site unmasked is rank-1
    LoRA on every layer's projection (W^l + W^l b^l a^l^T)."""
    kind = ""

    def __init__(self, adapter, sites: Sequence | None, a_init, read: str = "all", positions: str = "all"):
        import torch

        if read not in ("all", "location"):
            raise ValueError(f"`read` must be 'all' or 'location', got {read!r}")
        self.adapter = adapter
        sites = adapter.sites(self.kind) if sites is None else sorted(sites)
        adapter.check_inside(sites)
        self.layers = sorted({s.layer for s in sites})
        width = self.width(adapter)
        write = torch.zeros(len(self.layers), width)
        rows = torch.tensor([self.layers.index(s.layer) for s in sites], dtype=torch.long)
        cols = [self.coordinates(adapter, s) for s in sites]
        for row, col in zip(rows.tolist(), cols):
            write[row, col] = 1.0
        read_mask = write.clone() if read == "location" else torch.ones_like(write)
        device = _device(adapter)
        self.write_mask, self.read_mask = write.to(device), read_mask.to(device)
        self.a = torch.nn.Parameter((a_init[self.layers].clone() * read_mask).to(device))
        self.b = torch.nn.Parameter(torch.zeros(len(self.layers), width, device=device))
        self._positions = AtPositions(positions)

    @staticmethod
    def width(adapter) -> int:
        raise NotImplementedError

    @staticmethod
    def coordinates(adapter, site) -> slice:
        raise NotImplementedError

    def modules(self) -> list | None:
        return None

    @property
    def on_batch(self):
        return self._positions.on_batch

    def effective_rows(self, row: int):
        return self.a[row] * self.read_mask[row], self.b[row] * self.write_mask[row]

    @property
    def n_params(self) -> int:
        """Free coordinates: a's read coordinates plus b's coordinates inside the location."""
        return int(self.read_mask.sum().item() + self.write_mask.sum().item())

    def delta(self, row: int, o):
        a = self.a[row] * self.read_mask[row]
        b = self.b[row] * self.write_mask[row]
        return self._positions.only((o.float() @ a)[..., None] * b)

    @contextlib.contextmanager
    def attached(self, model) -> Iterator["_MaskedInputEdit"]:
        from loccheck.models.hooks import displaced_inputs

        with self._positions.held(), displaced_inputs(self.adapter, self.layers, self.delta, self.modules()):
            yield self


class HeadEdit(_MaskedInputEdit):
    """The masked edit at the input of W^l, the attention output projection (o_proj): its
    coordinates are the heads' outputs concatenated, head h's the slice of its head_dim."""
    kind = "head"

    @staticmethod
    def width(adapter) -> int:
        return adapter.width

    @staticmethod
    def coordinates(adapter, site) -> slice:
        return adapter.head_slice(site)


class NeuronEdit(_MaskedInputEdit):
    """The masked edit at the input of W^l, the MLP's down projection: its coordinates are the
    MLP's hidden units, neuron u the coordinate u. Every unit unmasked is rank-1 LoRA on every
    down projection, the same functions as the MLP sites' ceiling (`MlpEdit`) reaches."""
    kind = "neuron"

    @staticmethod
    def width(adapter) -> int:
        return adapter.mlp_width

    @staticmethod
    def coordinates(adapter, site) -> slice:
        return slice(site.unit, site.unit + 1)

    def modules(self) -> list:
        return [self.adapter.mlp_out(layer) for layer in self.layers]


class SubspaceEdit(_RankOneEdit):
    """h <- h + <a, h> U^T c in the residual stream h after layer l: U (k, width) orthonormal
    rows spanning the location (a subspace, or an SAE's named decoder rows), c (k) and a (width)
    learned, c starting at zero (the identity). What it writes lies in span(U) whatever a is.
    With U the identity it is every rank-1 edit of that stream: the location's ceiling, in
    whose family every subspace of the layer lies. With `read="location"`, a is projected onto
    span(U) (it reads only the subspace)."""

    def __init__(self, adapter, layer: int, basis, a_init, read: str = "all", positions: str = "all"):
        import torch

        if read not in ("all", "location"):
            raise ValueError(f"`read` must be 'all' or 'location', got {read!r}")
        if not 0 <= layer < adapter.n_layers:
            from loccheck.errors import AdapterError
            raise AdapterError(f"layer {layer} is outside the model: it has {adapter.n_layers} layers (0-based)")
        self.adapter, self.layers, self.read = adapter, [layer], read
        device = adapter.device
        self.U = torch.as_tensor(np.asarray(basis), dtype=torch.float32).to(device)   # (k, width)
        a = a_init[[layer]].clone().to(device)
        if read == "location":
            a = (a @ self.U.T) @ self.U
        self.a = torch.nn.Parameter(a)                                                 # (1, width)
        self.b = torch.nn.Parameter(torch.zeros(1, self.U.shape[0], device=device))    # (1, k): c
        self._positions = AtPositions(positions)

    @property
    def on_batch(self):
        return self._positions.on_batch

    @property
    def n_params(self) -> int:
        return int(self.U.shape[0] + (self.U.shape[0] if self.read == "location" else self.U.shape[1]))

    def _read(self):
        return (self.a @ self.U.T) @ self.U if self.read == "location" else self.a

    def effective_rows(self, row: int):
        """(a, the write vector U^T c), both in the stream's coordinates."""
        return self._read()[row], self.b[row] @ self.U

    def absorb(self, other) -> "SubspaceEdit":
        """Start from `other`, an edit of a subspace of this one's at the same layer: its write
        vector, in this basis (exact when span(other) lies in span(self)), and its read vector."""
        import torch

        a, write = other.effective_rows(0)
        with torch.no_grad():
            self.a[0] = a.to(self.a.device)
            self.b[0] = write.to(self.U.device) @ self.U.T
        return self

    def delta(self, row: int, h):
        write = self.b[row] @ self.U                                     # (width,)
        return self._positions.only((h.float() @ self._read()[row])[..., None] * write)

    @contextlib.contextmanager
    def attached(self, model) -> Iterator["SubspaceEdit"]:
        from loccheck.models.hooks import displaced_residual

        with self._positions.held(), displaced_residual([self.adapter.blocks[self.layers[0]]], self.delta):
            yield self


class AtPositions:
    """Which token positions an edit acts at: "all", or "answer", the prompt's last token and
    every answer token (as ITI edits), whose mask scoring passes before each forward
    (`on_batch`: `scoring.answer_logprobs` marks exactly those positions)."""

    def __init__(self, positions: str):
        if positions not in ("all", "answer"):
            raise ValueError(f"`positions` must be 'all' or 'answer', got {positions!r}")
        self.positions, self._mask = positions, None

    @property
    def on_batch(self):
        return self.set_mask if self.positions == "answer" else None

    def set_mask(self, mask) -> None:
        self._mask = mask

    @contextlib.contextmanager
    def held(self):
        try:
            yield
        finally:
            self._mask = None

    def only(self, delta):
        """`delta` (batch, pos, width) kept at the policy's positions."""
        if self.positions == "all":
            return delta
        if self._mask is None or self._mask.shape != delta.shape[:2]:
            raise RuntimeError("an edit at the answer positions needs the positions of each forward: "
                               "score with on_batch=edit.on_batch (a forward of another shape, "
                               "incremental decoding, cannot be edited at these positions)")
        return delta * self._mask[..., None].to(delta.dtype)


class MlpEdit(_RankOneEdit):
    """y^l <- y^l + <a^l, x^l> b^l, where y^l = W^l x^l is the output of layer l's MLP down
    projection: rank-1 LoRA on W^l (W^l + b^l a^l^T), for each layer of the location. The whole
    model's edit is the same on every layer. b starts at zero (the identity).

    In a mixture of experts there is no one down projection: the site is the sparse block's
    output y^l (the chosen experts' weighted sum), and the edit reads that output itself,
    y^l <- (I + b^l a^l^T) y^l: rank one, the identity at b = 0, one per layer (not per expert),
    so a claim, the ceiling and the null edit the same kind of thing. It can only transform what
    the experts wrote (a block that writes nothing cannot be edited into writing), as a dense
    site's edit can only map the MLP's own hidden units; reading the block's input instead would
    let any layer write anything. The router is untouched and its losses never enter."""

    def __init__(self, adapter, sites: Sequence[MlpLoc] | None, a_init, positions: str = "all"):
        import torch

        self._positions = AtPositions(positions)
        sites = adapter.sites("mlp") if sites is None else sorted(sites)
        adapter.check_inside(sites)
        self.adapter = adapter
        self.layers = [s.layer for s in sites]
        device = adapter.device
        self.a = torch.nn.Parameter(a_init[self.layers].clone().to(device))
        self.b = torch.nn.Parameter(torch.zeros(len(self.layers), adapter.model_width, device=device))

    @property
    def n_params(self) -> int:
        return int(self.a.numel() + self.b.numel())

    def delta(self, row: int, x, y):
        read = y if self.adapter.experts else x
        return self._positions.only((read.float() @ self.a[row])[..., None] * self.b[row])   # (batch, pos, d_model)

    @property
    def on_batch(self):
        return self._positions.on_batch

    @contextlib.contextmanager
    def attached(self, model) -> Iterator["MlpEdit"]:
        from loccheck.models.hooks import displaced_outputs

        with self._positions.held(), displaced_outputs([self.adapter.mlp_out(l) for l in self.layers], self.delta):
            yield self


class FullLoraEdit:
    """Rank-1 LoRA (peft) on every layer's output projection: the whole-model ceiling.

    The edit owns its A (n_layers, in) and B (n_layers, out) rows; `attached` wraps the model
    with peft, loads them into the LoRA layers, and copies them back when it exits (after
    training), then unwraps, so the model is left as it was."""
    on_batch = None

    def __init__(self, adapter, a_init):
        import torch

        self.adapter = adapter
        width_out = adapter.projections[0].weight.shape[1 if adapter.fan_in_fan_out else 0]
        self.A = a_init.clone().float()                                 # (n_layers, in)
        self.B = torch.zeros(adapter.n_layers, width_out)               # (n_layers, out)
        self._params: list = []

    @property
    def n_params(self) -> int:
        return int(self.A.numel() + self.B.numel())

    @contextlib.contextmanager
    def attached(self, model) -> Iterator["FullLoraEdit"]:
        import torch
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, bias="none",
                            target_modules=list(self.adapter.proj_names),
                            fan_in_fan_out=self.adapter.fan_in_fan_out)
        with warnings.catch_warnings():
            # peft asks transformers a deprecated question (is_gradient_checkpointing)
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, config)
        loras = [model.get_submodule(name) for name in self.adapter.proj_names]
        try:
            self._params = []
            for layer, lora in enumerate(loras):
                a, b = lora.lora_A["default"].weight, lora.lora_B["default"].weight
                with torch.no_grad():
                    a.copy_(self.A[layer][None, :])
                    b.copy_(self.B[layer][:, None])
                self._params += [a, b]
            yield self
        finally:
            with torch.no_grad():
                for layer, lora in enumerate(loras):
                    self.A[layer] = lora.lora_A["default"].weight[0].detach().cpu()
                    self.B[layer] = lora.lora_B["default"].weight[:, 0].detach().cpu()
            peft_model.unload()  # puts the original projection modules back
            self._params = []

    def trainable(self) -> list:
        return self._params

    def state(self) -> dict[str, np.ndarray]:
        return {"A": self.A.numpy().copy(), "B": self.B.numpy().copy()}

    def load_state(self, state: dict) -> "FullLoraEdit":
        import torch

        self.A, self.B = torch.from_numpy(state["A"]).clone(), torch.from_numpy(state["B"]).clone()
        return self


def _make(testbed, settings: OptimalSettings, location):
    """The edit before training (the identity); `location` None is the whole model, every site
    of the kind unmasked: the same parameterization as at a location, so the ceiling is a fair one.
    A subspace's ceiling is a location too: the whole residual stream at its layer
    (`ceiling_location`)."""
    kind = location[0].kind if location else settings.site_kind
    a_init = initial_read_vectors(testbed.adapter, settings.train.seed, settings.init_std, kind)
    adapter, positions = testbed.adapter, settings.positions
    if kind == "mlp":
        return MlpEdit(adapter, location, a_init, positions=positions)
    if kind in RESIDUAL_KINDS:
        return SubspaceEdit(adapter, location[0].layer, testbed.basis_of(location), a_init,
                            read=settings.read, positions=positions)
    edit = NeuronEdit if kind == "neuron" else HeadEdit
    return edit(adapter, location, a_init, read=settings.read, positions=positions)


def _fit(testbed, settings: OptimalSettings, location, on_step=None, start=None) -> Fitted:
    """`start`: (settings, location, state) of a fitted edit whose location lies inside this
    one's, to continue from instead of the identity."""
    from loccheck.edits.training import train_edit

    edit = _make(testbed, settings, location)
    if start is not None:
        edit.absorb(_restore(testbed, *start))
    reference = testbed.reference          # the unedited model's: computed before the edit is attached
    with edit.attached(testbed.model):
        fit = train_edit(testbed.model, edit, testbed.train, reference, settings.train, testbed.pad_id,
                         on_step=on_step, warm=start is not None)
    return Fitted(edit, {"learning_rate": settings.train.learning_rate, "steps": len(fit.loss_curve),
                         "epochs": fit.epochs, "initial_objective": fit.initial_objective,
                         "final_objective": fit.final_objective, "attained": fit.attained,
                         "converged": fit.converged, "stopped": fit.stopped,
                         "backtracks": fit.backtracks,
                         "objective_curve": list(fit.objective_curve),
                         "loss_curve": list(fit.loss_curve)})


def _restore(testbed, settings: OptimalSettings, location, state: dict):
    return _make(testbed, settings, location).load_state(state)


# --- its part of the report (from result.json alone; matplotlib is imported when it draws) ---

LOSS_CURVES_NAME = "loss_curves.png"


def _report_lines(r: dict) -> list[str]:
    edits = edits_of(r, "optimal")
    kind = site_noun(r)
    rows = [[edit_name(e), sites(e.get("location") or [], kind=kind), fmt(e.get("n_params")),
             fmt(e.get("learning_rate")), fmt(e.get("epochs")), fmt(e.get("steps")),
             f"{fmt(e.get('initial_objective'))} -> {fmt(e.get('final_objective'))}",
             fmt(e.get("attained")), "yes" if e.get("converged") else f"**no** ({e.get('stopped')})"]
            for e in edits]
    capped = [f"{edit_name(e)} ({e.get('stopped')})" for e in edits if not e.get("converged")]
    if any(e.get("stopped") == "budget" for e in edits):
        note = ("DPO has no optimum (its loss only approaches 0 as the margin grows), so these edits "
                "are a budget-matched comparison: each trained exactly `max_epochs` epochs, none is "
                "an optimum.")
    elif capped:
        note = (f"**Warning:** the verdict rests on {len(capped)} of {len(edits)} edits that did not "
                "converge (capped: still improving at the cap; stalled: steps lost in round-off; "
                "diverged), so they may not be optimal: " + ", ".join(capped) + ".")
    else:
        note = (f"All {len(edits)} edits converged: each came within `convergence_tol` of the "
                "objective's optimum, or got stuck (two epochs improving its whole-training-set "
                "objective by at most `convergence_tol` of the improvement made so far, or three "
                "undone ones, since its last real improvement) after improving it (plateau), or "
                "never received a gradient at all (stationary).")
    note += _continued_note(edits)
    diverged = [edit_name(e) for e in edits if e.get("diverged")]
    if diverged:
        note += (f" **{len(diverged)} diverged** ({', '.join(diverged)}): a diverged edit has no "
                 "optimum to compare, so the test counts a diverged random location as editing at "
                 "least as well as the claim, a diverged claim as beaten by every random location "
                 "(FALSIFIED) and a diverged whole-model edit as no effect to localize (NO_EFFECT); "
                 "none of them is cached, so the next run fits them again.")
    headers = ["edit", "location", "params", "learning rate", "epochs", "steps",
               "objective (start -> end)", "share of attainable", "converged?"]
    return ["## Convergence of the optimal edits", "",
            "`optimal` fits the best rank-1 edit at each location by preference optimisation: the "
            "same data, order, convergence rule and cap everywhere; the claim and the random "
            "locations share `learning_rate`, the whole-model edit has its own "
            "(`ceiling_learning_rate`), the same for every claim. \"Share of attainable\" is "
            "(start - end) / (start - optimum), from the identity edit.",
            "", table(rows, headers), "", note, "",
            f"![Training loss per step of the claimed-location edit, the whole-model edit and the "
            f"{r.get('n_null')} random-location edits]({LOSS_CURVES_NAME})"]


def _continued_note(edits: list[dict]) -> str:
    """What was done to make the ceiling the optimum of the whole-model edit."""
    ceiling = next((e for e in edits if e.get("role") == "ceiling"), None)
    if ceiling is None or not ceiling.get("continued_from"):
        return ""
    src, first = ceiling["continued_from"], ceiling.get("first_fit") or {}
    name = "the claim" if src.get("role") == "claim" else f"random location {src.get('index')}"
    return (f" **The ceiling was continued:** fitted from the identity, the whole-model edit "
            f"stopped ({first.get('stopped')}) at training objective {fmt(first.get('final_objective'))}, "
            f"above the {fmt(src.get('final_objective'))} of {name}'s edit by more than the rule's "
            "tolerance. Every location's edit is a whole-model edit with the other sites' write "
            "vectors at zero, so the whole-model optimum can be no worse: it was fitted again "
            f"starting from {name}'s parameters, by the same rule, and reached "
            f"{fmt(ceiling.get('final_objective'))} ({ceiling.get('stopped')}). The table's "
            "whole-model row is that continued fit.")


def _report_figures(r: dict, out_dir: Path) -> None:
    plot_loss_curves(edits_of(r, "optimal"), out_dir / LOSS_CURVES_NAME, site=site_noun(r))


def plot_loss_curves(edits: Sequence[dict], path: str | os.PathLike, *, site: str = "head") -> Path:
    """Training loss per optimizer step for every edit in `edits` (the result dict's list).

    The claim and the whole-model edit are bold; random locations are thin grey lines with
    one legend entry. The y axis is logarithmic when every finite loss is positive.
    """
    from loccheck.render.figures import CLAIM_COLOR, FIGSIZE, FULL_COLOR, NULL_COLOR, RC, legend_below, plt, save_figure, ticker

    randoms = [e for e in edits if e.get("role") == "random"]
    styles = {"claim": dict(color=CLAIM_COLOR, lw=2.4, label=f"claimed {site}s", zorder=3),
              "ceiling": dict(color=FULL_COLOR, lw=2.0, ls="--", label="whole model", zorder=3)}
    all_losses = []
    with plt.style.context("default"), plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
        labelled = False
        # Random curves first so the claim and the ceiling are drawn on top of them.
        for e in sorted(edits, key=lambda e: e.get("role") != "random"):
            y = np.asarray([np.nan if v is None else v for v in e.get("loss_curve") or []], float)
            if y.size == 0:
                continue
            all_losses.append(y[np.isfinite(y)])
            x = np.arange(1, y.size + 1)
            if e.get("role") == "random":
                ax.plot(x, y, color=NULL_COLOR, lw=0.8, alpha=0.6, zorder=1,
                        label=None if labelled else f"random ({len(randoms)})")
                labelled = True
            else:
                ax.plot(x, y, **styles.get(e.get("role"), dict(lw=1.5, label=str(e.get("role")))))
        finite = np.concatenate(all_losses) if all_losses else np.empty(0)
        if finite.size and np.all(finite > 0):
            ax.set_yscale("log")
            # Plain tick labels at 1, 2, 5 x 10^k: a loss spanning under a decade would
            # otherwise get one or two scientific-notation labels.
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0), numticks=12))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title("Edit training loss per step")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        if all_losses:
            legend_below(fig)
        else:
            ax.text(0.5, 0.5, "no loss curves recorded", transform=ax.transAxes, ha="center")
        return save_figure(fig, path)


register_edit_method(EditMethod("optimal", OptimalEditSection, _settings, _fit, _restore, _make,
                                "rank-1 edit restricted to the location, fitted by IPO/DPO",
                                site_kinds=("head", "mlp", "neuron", "subspace", "latent"),
                                continues_ceiling=True,
                                report_lines=_report_lines, report_figures=_report_figures))
