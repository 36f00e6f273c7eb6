"""Evidence bundles: what a verification measured, in a folder meant to be committed beside the
claim, so that a paper's CI re-derives the verdict from it on a CPU runner (`run.replay`) and
anyone with the model can refit a sample of it (`replay.audit`).

    <bundle>/MANIFEST.json   format, claim name, the numerics that made the fits, and the
                             sha256 of every other file (a changed or missing file is caught)
    <bundle>/claim.json      the effective claim the numbers were computed under
    <bundle>/facts.json      `result.measured_facts`: every edit's scores and convergence facts,
                             the unedited scores, the ablations, the heuristic's output, and the
                             identities of the model, data, code and libraries
    <bundle>/result.json     the result verify wrote (for people: replay derives its own)
    <bundle>/fits/NNNN.json  one per fitted edit: its job (method, settings, location, role,
                             cache key), its parameters (float32, base64; above
                             MAX_STATE_BYTES only their shapes and sha256) and its scores

Reading a bundle imports no torch. Every problem is a one-line `BundleError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loccheck.errors import LoccheckError

FORMAT = 1
MANIFEST = "MANIFEST.json"
MAX_FILE_BYTES = 1 << 30     # a 7B head claim's bundle is megabytes; anything near this is not one
# A fit's parameters are recorded up to this size. Above it (ROME's whole-model edit on SmolLM2:
# a rank-one edit per fact and layer, 20 MB) only their shapes and sha256 are: replay needs no
# parameters, and an audit refits.
MAX_STATE_BYTES = 4 << 20


class BundleError(LoccheckError):
    """An evidence bundle that cannot be trusted or does not match the claim: one line."""


@dataclass(frozen=True)
class Bundle:
    folder: Path
    manifest: dict
    claim: dict          # the effective claim it was recorded under
    facts: dict
    fits: list[dict]     # fits/NNNN.json in order


def write_bundle(claim, result, folder: str | os.PathLike) -> Path:
    """Write `result`'s evidence bundle to `folder`, replacing any bundle there only once the new
    one is complete (written aside, then renamed into place)."""
    from loccheck.files import write_json_atomic
    from loccheck.run.jobs import every_run

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        files = {"claim.json": claim.effective_config(), "facts.json": result.facts,
                 "result.json": result.payload}
        for i, o in enumerate(every_run(result.outcomes)):
            files[f"fits/{i:04d}.json"] = {
                "job": {"method": o.job.method, "role": o.job.role, "index": o.job.index, "size": o.job.size,
                        "location": o.job.location_text, "settings": o.job.settings.to_json(),
                        "key": o.job.key, "continued_from": o.job.continued_from},
                "n_params": o.n_params, "info": o.info, "metrics": o.metrics, **_parameters(o)}
        for name, obj in files.items():
            write_json_atomic(obj, staging / name)
        write_json_atomic({"format": FORMAT, "claim_name": claim.name, "created_with": _creator(),
                           "files": {name: _sha256(staging / name) for name in sorted(files)}},
                          staging / MANIFEST)
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _parameters(outcome) -> dict:
    """{"state": the fit's parameters}, or, above MAX_STATE_BYTES, {"state_omitted": their
    shapes, size and sha256 (of the float32 bytes in sorted name order)}."""
    import numpy as np

    from loccheck.run.jobs import encode_state

    state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted((outcome.state or {}).items())}
    size = sum(v.nbytes for v in state.values())
    if size <= MAX_STATE_BYTES:
        return {"state": encode_state(state)}
    digest = hashlib.sha256()
    for v in state.values():
        digest.update(v.tobytes())
    return {"state_omitted": {"bytes": size, "shapes": {k: list(v.shape) for k, v in state.items()},
                              "sha256": digest.hexdigest()}}


def _creator() -> dict:
    """The loccheck, numerics and libraries that made the bundle's numbers."""
    from loccheck import __version__
    from loccheck.numerics import NUMERICS, library_versions

    return {"loccheck": __version__, "numerics": dict(NUMERICS), "libraries": library_versions()}


def _swap_in(staging: Path, folder: Path) -> None:
    """Put the complete `staging` folder at `folder`: the old bundle is moved aside first and
    removed only after the new one is in place."""
    old = None
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir() or folder.is_symlink():
            raise BundleError(f"evidence folder {folder} exists and is not a folder")
        old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
        os.replace(folder, old / "bundle")
    try:
        os.replace(staging, folder)
    except BaseException:
        if old is not None:
            os.replace(old / "bundle", folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_bundle(folder: str | os.PathLike) -> Bundle:
    """The bundle at `folder`, every file checked against the manifest's sha256 first."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise BundleError(f"{folder}: no evidence bundle here ({MANIFEST} is missing); record one with "
                          "`loccheck verify CLAIM --evidence DIR`")
    manifest = _json(folder / MANIFEST)
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(listed, dict) or manifest.get("format") != FORMAT
            or not isinstance(manifest.get("created_with"), dict)):
        raise BundleError(f"{folder / MANIFEST}: not a loccheck evidence manifest of format {FORMAT}")
    for name in ("claim.json", "facts.json"):
        if name not in listed:
            raise BundleError(f"{folder / MANIFEST}: lists no {name}")
    for name, sha in sorted(listed.items()):
        path = folder / name
        if not _inside(folder, path) or not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing")
        if _sha256(path) != sha:
            raise BundleError(f"{path}: its sha256 is not the manifest's (the file was changed after "
                              "it was recorded)")
    unlisted = sorted(p.relative_to(folder).as_posix() for p in (folder / "fits").glob("*.json")
                      if p.relative_to(folder).as_posix() not in listed) if (folder / "fits").is_dir() else []
    if unlisted:
        raise BundleError(f"{folder / unlisted[0]}: not listed in the manifest")
    fits = [_json(folder / name) for name in sorted(listed) if name.startswith("fits/")]
    return Bundle(folder, manifest, _json(folder / "claim.json"), _json(folder / "facts.json"), fits)


def manifest_seed(bundle: Bundle) -> int:
    """A seed the bundle's author cannot choose freely: from the sha256 of its manifest's
    file list (which covers every number in it)."""
    text = json.dumps(bundle.manifest["files"], sort_keys=True).encode()
    return int(hashlib.sha256(text).hexdigest()[:16], 16)


def _json(path: Path):
    """A file's strict JSON: NaN and Infinity (which Python's json would accept) are refused, as
    are files that are not JSON or are too large."""
    def refuse(token):
        raise ValueError(f"{token} is not a JSON number (a value that was not finite is recorded as null)")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError(f"{path}: not readable as strict JSON ({str(err).splitlines()[0][:200]})") from None


def _sha256(path: Path) -> str:
    """Read every time (not remembered by path and mtime): a bundle file is small, and a check
    must see the bytes as they are now."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inside(folder: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
