"""The rank-one edits `method: optimal` fits, one per kind of site, each starting as the
identity (its write vector zero) and attachable to a model with hooks (`attached`):

- `HeadEdit` and `NeuronEdit`: o <- o + <a, o> (m * b) at the input of a projection (the attention
  output projection's heads, the MLP down projection's hidden units), m masking the location;
- `MlpEdit`: rank-1 LoRA on an MLP's down projection (for experts, on the sparse block's output);
- `SubspaceEdit`: h <- h + <a, h> U^T c in the residual stream after a layer, inside span(U);
- `FullLoraEdit`: rank-1 LoRA with peft on every output projection, the heads' ceiling as an
  independent cross-check;
- `AtPositions`: the token positions any of them acts at.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence

import numpy as np

from loccheck.locations import MlpLoc


def initial_read_vectors(adapter, seed: int, init_std: float, kind: str = "head"):
    """(n_layers, read width) initial a^l, the read width being all heads' (n_heads * head_dim),
    the MLP's hidden size (MLP layers, neurons) or the residual stream's (subspaces, SAE
    latents); row l is the same whatever else is edited."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    width = {"head": adapter.width, "mlp": adapter.mlp_width, "neuron": adapter.mlp_width}.get(
        kind, adapter.model_width)
    return torch.randn(adapter.n_layers, width, generator=gen) * init_std


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
        for s in sites:
            write[self.layers.index(s.layer), self.coordinates(adapter, s)] = 1.0
        read_mask = write.clone() if read == "location" else torch.ones_like(write)
        device = adapter.device
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
