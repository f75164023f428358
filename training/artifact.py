"""Save and load a fitted router as one joblib file plus a JSON manifest.

.. warning::

   **joblib is pickle: loading an artifact executes code.** A crafted
   artifact can run anything with the permissions of the process that loads
   it. Only load artifacts you produced yourself or received through a
   channel you trust. The ``sha256`` in the manifest detects *corruption*
   (a truncated copy, a flipped bit, the wrong file put in place); it does
   **not** detect *tampering*, because whoever can replace the artifact can
   also rewrite the manifest beside it. For that, sign the artifact (see
   *Signatures* below) or pin its sha256 (``expected_sha256=``) in a place
   the attacker cannot write.

Layout
------
An artifact is two files in one directory:

* the payload ``path`` (for example ``router.joblib``), written by
  :func:`joblib.dump` with ``compress=3``;
* the manifest ``path.with_suffix(".manifest.json")``: the *last* suffix of
  the artifact name is replaced, so ``router.joblib`` has the manifest
  ``router.manifest.json``, ``router.v2.joblib`` has
  ``router.v2.manifest.json`` and a suffix-less ``router`` has
  ``router.manifest.json``. Two artifacts that differ only in their last
  suffix (``router.joblib`` and ``router.pkl``) would share one manifest;
  :func:`save_artifact` refuses to overwrite a manifest that describes
  another existing artifact, and :func:`load_artifact` refuses a manifest
  whose ``artifact_file`` is not the file being loaded.

The manifest is plain JSON (no NaN or infinity) so that tools in any
language can read it; :func:`read_manifest` reads it without unpickling.
Its fields are ``format``, ``format_version``, ``created_at`` (UTC, ISO
8601), ``versions`` (package name -> version string, ``None`` when the
package is not installed), ``models``, ``budgets``, ``feature_schema``,
``data_fingerprint``, ``metrics``, ``extra``, ``artifact_file`` (base name
of the payload), ``sha256`` (hex digest of the payload bytes) and, for a
signed artifact only, ``signature`` (see *Signatures*).

Why the loader is strict
------------------------
A router that loads but behaves slightly differently is worse than one that
refuses to load: nobody notices. :func:`load_artifact` therefore refuses,
with an error that names the file and what to do, a manifest that is not
small, shallow JSON (:data:`MAX_MANIFEST_BYTES`, :data:`MAX_MANIFEST_DEPTH`)
or lacks a field or has a damaged ``artifact_file`` or ``models``, an
unknown ``format``, a different ``format_version``, a missing or wrong
signature when a key is given, payload bytes whose sha256 differs from the
manifest, a different major.minor version of scikit-learn, LightGBM, NumPy
or cascade-router (pickled estimators and boosters are not portable across
those), a payload that cannot be unpickled, and an object whose ``models_``
differ from the manifest's ``models``.

Signatures
----------
``save_artifact(..., key=PRIVATE)`` with an Ed25519 private key (a
``cryptography`` ``Ed25519PrivateKey``, or its PKCS#8 PEM text) adds a
``signature`` field to the manifest: ``{"algorithm": "ed25519",
"signature": HEX}``, the Ed25519 signature of the manifest's canonical JSON
without that field (keys sorted, no whitespace, ASCII;
:func:`signed_bytes`). The manifest holds the payload's sha256 and
``artifact_file`` name, so the one signature covers both files.
``load_artifact(..., key=PUBLIC)`` with the matching public key (an
``Ed25519PublicKey`` or its PEM text) checks it before it looks at the
payload, then checks the payload bytes against the (now authenticated)
sha256, and only then unpickles: a changed manifest, a changed payload, a
manifest taken from another signed artifact, a missing signature and a
signature made with another key are all refused without running any of
the payload's code. A wrong signature raises
:class:`ArtifactSignatureError`, a ``ValueError``. The public key only
verifies: whoever holds it (every service and scorer) cannot produce a
signature it accepts, so a verifier's configuration leaking, or being
turned into an exfiltration channel, does not let anyone forge an artifact
(issue 30). ``python -m training.keygen`` makes a key pair; ``training.fit
--sign-key-env NAME`` reads the private key's PEM from a variable, the
loaders' ``--verify-key FILE`` the public key's PEM from a file.

Migration: artifacts signed by earlier releases carry ``{"algorithm":
"hmac-sha256", "mac": HEX}``, an HMAC under a shared secret, which signs as
well as it verifies. Such an artifact still loads when ``key`` is that
secret (bytes, or a str that is not PEM; at least :data:`MIN_KEY_BYTES`
bytes; CLIs: ``--verify-key-env NAME``), with a
:class:`HMACSignatureWarning`; so does signing with such a secret. A
public key never accepts an HMAC signature (nor a secret an Ed25519 one):
the algorithm is chosen by the key the caller holds, never by the
manifest, so a manifest cannot downgrade its own check. Re-sign with
Ed25519 by re-running ``training.fit --sign-key-env``.

What it does not protect: whoever holds the private key can sign
anything; a signed artifact is still a pickle, so it runs the code of
whoever signed it; an older artifact signed with the same key verifies too
(replay), unless the caller pins the payload with ``expected_sha256=``.
Without a key, a signed artifact loads like an unsigned one (its signature
is not checked), and unless the payload is pinned, loading warns once per
process and path (:class:`UnsignedArtifactWarning`) that nothing vouched
for it; ``--require-signed`` makes the CLIs refuse to run without a key.
The ``signature`` field is optional and changes nothing else in the
layout, so it did not change :data:`FORMAT_VERSION`.

Writes are atomic (:mod:`training.files`): each file is written to a hidden
temporary file in the target directory, flushed to disk and moved into
place with :func:`os.replace`, so
a crash never leaves a half-written file under the final name. The two
files cannot be replaced together atomically; the payload is moved first,
so a crash between the two moves leaves a new payload beside the old
manifest, which :func:`load_artifact` rejects as a sha256 mismatch rather
than loading it. Re-running training overwrites an existing artifact: that
is the normal way to refresh one.

Examples
--------
>>> from training.artifact import save_artifact, load_artifact
>>> save_artifact(router, "out/router.joblib", models=router.models_,
...               budgets=[0.001, 0.01])  # doctest: +SKIP
>>> router, manifest = load_artifact("out/router.joblib")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import io
import json
import math
import os
import pickle
import platform
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import joblib
import numpy as np
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .files import discard, fsync_directory, write_temporary

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HMAC_ALGORITHM",
    "MANIFEST_SUFFIX",
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_DEPTH",
    "MIN_KEY_BYTES",
    "SIGNATURE_ALGORITHM",
    "ArtifactSignatureError",
    "HMACSignatureWarning",
    "UnsignedArtifactWarning",
    "load_artifact",
    "manifest_path",
    "new_key_pair",
    "read_manifest",
    "save_artifact",
    "signed_bytes",
    "signing_key",
]

PathLike = str | os.PathLike

FORMAT = "cascade-router-artifact"
"""Value of the manifest's ``format`` field; anything else is not ours."""

FORMAT_VERSION = 3
"""Bumped whenever the layout or meaning of the manifest or payload changes.

* 1: first release.
* 2: pickled classes moved packages (``estimators.router`` ->
  ``estimators.estimator``, ``training.router`` ->
  ``training.serving.router``, ``training.table`` -> ``estimators.table``,
  ``training._forest`` -> ``estimators._forest``), so a version-1 payload
  cannot be unpickled by this release; it is refused before unpickling.
* 3: estimators learned from partial logs (``RoutingTable.logged``,
  ``RoutingTable.propensity``; ``QualityEstimator.pooled_``), which a
  version-2 estimator lacks. Issue 31 moved the router back to
  ``training.router`` (offline code may import it without the serving
  package) and made ``Policy`` a subclass of ``DecisionRule`` with the same
  fields; that did not bump the version, because version-3 payloads written
  before still load: ``training.serving.router`` keeps the name ``Router``
  for them, and a pickled policy's fields are the ones it always had.
"""

MANIFEST_SUFFIX = ".manifest.json"
"""Replaces the artifact's last suffix to name its manifest."""

MAX_MANIFEST_BYTES = 16 * 2**20
"""A larger manifest is refused unread: real ones hold a few kilobytes of
metadata, and parsing a file of any size would let a bad one exhaust memory
before anything is checked."""

MAX_MANIFEST_DEPTH = 64
"""Deepest nesting of lists and objects a manifest may have. Real ones nest a
few levels (``metrics`` -> ``budgets`` -> a row); a file that parses only
just below Python's recursion limit would make every later recursive step
(the signature's canonical JSON) fail with a ``RecursionError``."""

SIGNATURE_ALGORITHM = "ed25519"
"""The ``algorithm`` of a manifest's ``signature`` written with an Ed25519 private key."""

HMAC_ALGORITHM = "hmac-sha256"
"""The ``algorithm`` of signatures written by earlier releases with a shared secret (deprecated)."""

MIN_KEY_BYTES = 32
"""Shortest (deprecated) HMAC secret accepted: a MAC is only as strong as its
key, and a short or memorable one can be found by trying candidates against
any signed manifest."""


class ArtifactSignatureError(ValueError):
    """The artifact's signature is missing, malformed, or not made with the given key.

    Raised before the payload is unpickled. A ``ValueError``, so the CLIs
    report it like any other bad input (exit code 2).
    """


class HMACSignatureWarning(FutureWarning):
    """An artifact was signed or verified with a shared HMAC secret, which every verifier could also sign with.

    Shown by default (a ``FutureWarning``): re-sign with an Ed25519 private
    key (``python -m training.keygen``, ``training.fit --sign-key-env``) and
    verify with its public key (``--verify-key``).
    """


class UnsignedArtifactWarning(UserWarning):
    """An artifact was loaded with nothing vouching for it: no key, and no pinned sha256.

    Emitted once per process and artifact path.
    """

COMPRESS = 3
"""joblib/zlib level: a good size/speed trade-off for arrays of floats."""

# Distribution name -> importable module, in the order they are recorded.
_RECORDED = {
    "cascade-router": None,  # no top-level module; metadata only
    "numpy": "numpy",
    "scipy": "scipy",
    "scikit-learn": "sklearn",
    "lightgbm": "lightgbm",
    "numba": "numba",
    "joblib": "joblib",
}
# Pickles of these are not portable across major.minor versions.
_CHECKED = ("cascade-router", "numpy", "scikit-learn", "lightgbm")
_REQUIRED_FIELDS = ("format", "format_version", "artifact_file", "sha256", "versions", "models")
_CHUNK = 1 << 20
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")  # a sha256 or an HMAC-SHA256, as written
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{128}")  # an Ed25519 signature, as written
#: (resolved artifact path, what was not verified) already warned about in this process.
_WARNED: set[tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def manifest_path(path: PathLike) -> Path:
    """Return the manifest path of an artifact: its last suffix replaced.

    ``router.joblib`` -> ``router.manifest.json``; ``router`` ->
    ``router.manifest.json``. A path that already ends with
    ``.manifest.json`` is returned unchanged, so tools that glob manifests
    can pass them directly to :func:`read_manifest`.

    Parameters
    ----------
    path : str or os.PathLike
        The artifact (or manifest) path.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    if path.name.endswith(MANIFEST_SUFFIX):
        return path
    return path.with_suffix(MANIFEST_SUFFIX)


def save_artifact(
    obj: object,
    path: PathLike,
    *,
    models: Sequence[str],
    budgets: Sequence[float],
    feature_schema: dict | None = None,
    data_fingerprint: str | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    key: Any = None,
) -> Path:
    """Write ``obj`` to ``path`` with joblib and its manifest beside it.

    Everything is validated and the manifest is serialised before any file
    is touched, so a bad argument never leaves a partial artifact. Both
    files are then written atomically (see the module docstring); an
    existing artifact at ``path`` is replaced, as a re-run of training does.

    Parameters
    ----------
    obj : object
        The fitted router (or anything picklable). If it has a ``models_``
        attribute it must equal ``models``, so that the artifact cannot be
        written with names in the wrong order.
    path : str or os.PathLike
        Payload file, conventionally ``*.joblib``. Its directory must exist.
        The manifest goes to :func:`manifest_path` of it.
    models : sequence of str
        Model names in the order the router indexes them. Non-empty, unique.
    budgets : sequence of float
        The budgets (cost per query) the policies were fitted for; finite.
    feature_schema : dict, optional
        Description of the inputs the router expects (names, dtypes, ...).
    data_fingerprint : str, optional
        Identifies the training data, e.g. :func:`training.data.fingerprint`.
    metrics : dict, optional
        Evaluation results to show without loading the router.
    extra : dict, optional
        Anything else worth recording (hyper-parameters, git commit, ...).
    key : Ed25519PrivateKey, or its PEM as str or bytes, optional
        Sign the artifact, so that :func:`load_artifact` with the public
        key can refuse a changed or swapped artifact before unpickling it
        (see the module docstring). Read it from a secret store or an
        environment variable, never from a file beside the artifact. Any
        other bytes or str is a deprecated HMAC secret
        (:class:`HMACSignatureWarning`).

    Returns
    -------
    pathlib.Path
        The manifest path.

    Raises
    ------
    ValueError
        If an argument is invalid, a metadata dict cannot be written as
        strict JSON, the manifest path belongs to another artifact, or the
        key is not a usable key (see :func:`signing_key`).
    TypeError
        If ``obj`` cannot be pickled, ``key`` is not a key, or it is a
        public key (which verifies but cannot sign).
    """
    path = Path(path)
    target = manifest_path(path)
    if target == path:
        raise ValueError(
            f"artifact path {path} ends with {MANIFEST_SUFFIX!r}, the suffix reserved for manifests; "
            "name the artifact e.g. 'router.joblib'"
        )
    if not path.parent.is_dir():
        raise ValueError(f"cannot write artifact {path}: directory {path.parent} does not exist; create it first")
    models = _check_models(models, obj)
    budgets = _check_budgets(budgets)
    if data_fingerprint is not None and not isinstance(data_fingerprint, str):
        raise ValueError(f"data_fingerprint must be a str or None, got {type(data_fingerprint).__name__}")
    secret = None if key is None else signing_key(key)
    if isinstance(secret, Ed25519PublicKey):
        raise TypeError("a public key verifies artifacts but cannot sign them; sign with the private key "
                        "(training.fit --sign-key-env NAME holding its PEM)")
    if isinstance(secret, bytes):
        _warn_hmac("signing", 3)
    _refuse_foreign_manifest(path, target)

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _environment_versions(),
        "models": models,
        "budgets": budgets,
        "feature_schema": feature_schema,
        "data_fingerprint": data_fingerprint,
        "metrics": metrics,
        "extra": extra,
        "artifact_file": path.name,
        "sha256": None,  # filled in once the payload bytes exist
    }
    _to_json(manifest)  # fail on unserialisable metadata before writing anything

    tmp_payload = write_temporary(path, lambda handle: _dump(obj, handle, path))
    tmp_manifest = None
    try:
        manifest["sha256"] = _sha256_file(tmp_payload)
        if secret is not None:  # the MAC of what a reader will parse, not of the in-memory dict (NumPy values)
            manifest["signature"] = _signature(json.loads(_to_json(manifest)), secret)
        text = _to_json(manifest).encode("utf-8")
        tmp_manifest = write_temporary(target, lambda handle: handle.write(text))
        os.replace(tmp_payload, path)  # payload first: see the module docstring
        os.replace(tmp_manifest, target)
    finally:
        discard(tmp_payload, tmp_manifest)
    fsync_directory(path.parent)
    return target


def read_manifest(path: PathLike) -> dict:
    """Read an artifact's manifest without unpickling anything.

    Only checks that the file is a JSON object of this ``format``; the
    ``format_version`` is *not* checked, so that listing tools can show
    artifacts written by other releases. Use :func:`load_artifact` for the
    full checks.

    Parameters
    ----------
    path : str or os.PathLike
        The artifact path (``router.joblib``) or the manifest itself.

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    FileNotFoundError
        If the manifest does not exist.
    ValueError
        If it is larger than :data:`MAX_MANIFEST_BYTES`, not valid UTF-8
        JSON (nested too deeply to parse, or with a number too long to
        convert, included), not an object, nested deeper than
        :data:`MAX_MANIFEST_DEPTH`, or of another ``format``.
    """
    target = manifest_path(path)
    if not target.is_file():
        raise FileNotFoundError(
            f"manifest {target} for artifact {path} not found; artifacts are written by "
            "training.artifact.save_artifact together with their manifest, keep the two files together"
        )
    with open(target, "rb") as handle:
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"manifest {target} is larger than {MAX_MANIFEST_BYTES:,} bytes, which no manifest "
                         "save_artifact writes is; the file is not a manifest or was replaced, re-save the artifact")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        problem = "nested too deeply to parse" if isinstance(exc, RecursionError) else str(exc)
        raise ValueError(f"manifest {target} is not valid JSON ({problem}); the file is corrupted, "
                         "re-save the artifact") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest {target} must hold a JSON object, got {type(manifest).__name__}")
    if _nesting(manifest) > MAX_MANIFEST_DEPTH:
        raise ValueError(f"manifest {target} nests lists and objects more than {MAX_MANIFEST_DEPTH} deep, which no "
                         "manifest save_artifact writes does; the file is damaged, re-save the artifact")
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"manifest {target} has format {manifest.get('format')!r}, expected {FORMAT!r}; "
            "this is not a cascade-router artifact"
        )
    return manifest


def load_artifact(
    path: PathLike,
    *,
    strict_versions: bool = True,
    key: Any = None,
    expected_sha256: str | None = None,
) -> tuple[object, dict]:
    """Verify and load an artifact written by :func:`save_artifact`.

    **This unpickles the file, which executes code: load trusted artifacts
    only** (see the module docstring). The checks run in this order and the
    first failure raises: manifest present and of this ``format`` and
    ``format_version``; its signature (with ``key``); manifest describes
    this file; sha256 of the payload bytes (and ``expected_sha256``);
    library versions; unpickling; ``models_`` of the loaded object. The
    payload is read into memory once, and exactly the bytes that were
    hashed are unpickled, so the file cannot be swapped between the check
    and the load.

    Parameters
    ----------
    path : str or os.PathLike
        The payload file (``router.joblib``).
    strict_versions : bool, default True
        If True, a major.minor difference between the recorded and installed
        versions of scikit-learn, LightGBM, NumPy or cascade-router raises.
        If False it only emits a :class:`UserWarning`; the object may then
        fail or, worse, behave differently.
    key : Ed25519PublicKey, or its PEM as str or bytes, optional
        The public key of the private key the artifact was signed with.
        With it, an artifact that is unsigned, or whose signature does not
        match this key and the manifest's bytes, is refused before its
        payload is read. A deprecated HMAC secret (any other bytes or str)
        verifies an HMAC-signed artifact, with an :class:`HMACSignatureWarning`.
        Without it (and without ``expected_sha256``), nothing vouches for
        the artifact: it loads as before, signed or not, and an
        :class:`UnsignedArtifactWarning` says so once per process and path.
    expected_sha256 : str, optional
        Hex sha256 the payload must have, from a place the artifact's
        writer cannot change (a deployment config, or the manifest a parent
        process verified with the key). Refuses a swapped payload, and an
        older artifact validly signed with the same key (replay).

    Returns
    -------
    obj : object
        The unpickled object.
    manifest : dict
        Its manifest.

    Raises
    ------
    FileNotFoundError
        If the artifact or its manifest is missing.
    ArtifactSignatureError
        With ``key``: the signature is missing, malformed or does not match.
    ValueError
        If any other check fails; the message names the file and what to do.
    TypeError
        If ``key`` is not a key, or ``expected_sha256`` not a str.
    """
    path = Path(path)
    secret = None if key is None else signing_key(key)
    pinned = None if expected_sha256 is None else _check_pin(expected_sha256)
    manifest = read_manifest(path)
    target = manifest_path(path)
    if "format_version" in manifest:  # first: another version may have other fields
        _check_format_version(manifest, target)
    _check_fields(manifest, target)
    if secret is not None:
        _check_signature(manifest, secret, target)
    elif pinned is None:
        _warn_unverified(path, signed="signature" in manifest)
    if manifest["artifact_file"] != path.name:
        recorded = manifest["artifact_file"]
        if (path.parent / str(recorded)).is_file():
            raise ValueError(
                f"manifest {target} describes artifact {recorded!r}, not {path.name!r}; two artifacts whose "
                "names differ only in their last suffix share a manifest, rename one and re-save it")
        raise ValueError(
            f"manifest {target} was written for artifact {recorded!r}, which is not beside it: the artifact "
            f"and its manifest were renamed (or copied under new names) after saving. Rename them back to "
            f"{recorded!r} and {manifest_path(path.parent / str(recorded)).name!r}; the manifest records the "
            "artifact's name with its sha256, so a renamed pair cannot be verified")
    if not path.is_file():
        raise FileNotFoundError(f"artifact {path} not found (its manifest {target} exists); re-save the artifact")
    payload = path.read_bytes()
    _check_sha256(payload, manifest["sha256"], path)
    if pinned is not None and manifest["sha256"].lower() != pinned:  # the payload's digest, as just checked
        raise ValueError(f"artifact {path} is not the one expected: its sha256 is {manifest['sha256']}, "
                         f"expected_sha256 is {pinned}; it was replaced since that digest was recorded, "
                         "deploy the expected artifact or update the pin")
    _check_versions(manifest["versions"], path, strict=strict_versions)
    obj = _unpickle(payload, path)
    _check_loaded_models(obj, manifest["models"], path)
    return obj, manifest


def signed_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a manifest's signature is the MAC of: its canonical JSON without ``signature``.

    Canonical (keys sorted, no whitespace, ASCII escapes) so that the MAC
    does not depend on how the file was indented or its keys ordered, and
    any tool that parses the manifest can recompute it. Prefixed with the
    format name, so that a MAC made with the same key for another purpose
    cannot pass as an artifact signature.

    Parameters
    ----------
    manifest : mapping
        A manifest as parsed from its JSON file.

    Returns
    -------
    bytes
    """
    fields = {name: value for name, value in manifest.items() if name != "signature"}
    # allow_nan: a parsed file may hold NaN; a signed one never does (save_artifact writes strict JSON), so
    # such a manifest simply fails verification
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return f"{FORMAT} signature v1\n".encode("ascii") + text.encode("ascii")


# --------------------------------------------------------------------------- #
# signatures
# --------------------------------------------------------------------------- #


def signing_key(key: Any) -> Ed25519PrivateKey | Ed25519PublicKey | bytes:
    """Check a key and return it in the form the signature functions take, so that a bad key fails before hours of
    training, not at the save.

    Parameters
    ----------
    key : Ed25519PrivateKey, Ed25519PublicKey, str or bytes
        A key object; PEM text of an Ed25519 private (PKCS#8, unencrypted)
        or public (SubjectPublicKeyInfo) key; or any other str (encoded as
        UTF-8) or bytes, a deprecated HMAC secret.

    Returns
    -------
    Ed25519PrivateKey, Ed25519PublicKey or bytes

    Raises
    ------
    TypeError
        If ``key`` is none of these.
    ValueError
        If PEM text is not an unencrypted Ed25519 key, or an HMAC secret is
        shorter than :data:`MIN_KEY_BYTES` (messages never show the key).
    """
    if isinstance(key, (Ed25519PrivateKey, Ed25519PublicKey)):
        return key
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        key = bytes(key)
    else:
        raise TypeError(f"key must be an Ed25519 key, its PEM text, or bytes or str, got {type(key).__name__}")
    if key.lstrip().startswith(b"-----BEGIN"):
        return _pem_key(key)
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"signing key has {len(key)} bytes, fewer than {MIN_KEY_BYTES}, and is not an Ed25519 key in PEM; "
            "make a key pair with python -m training.keygen")
    return key


def new_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM: the private key signs artifacts, the public key verifies them.

    Returns
    -------
    private_pem, public_pem : bytes
        PKCS#8 (unencrypted) and SubjectPublicKeyInfo PEM.
    """
    private = Ed25519PrivateKey.generate()
    return (private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


def _pem_key(pem: bytes) -> Ed25519PrivateKey | Ed25519PublicKey:
    """An Ed25519 key from PEM text, or one ValueError that does not quote it."""
    try:
        if b"PRIVATE KEY" in pem.split(b"\n", 1)[0]:
            loaded: Any = serialization.load_pem_private_key(pem, password=None)
        else:
            loaded = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ValueError(f"the key is PEM text but not an unencrypted Ed25519 key ({type(error).__name__}); make a "
                         "key pair with python -m training.keygen") from None
    if not isinstance(loaded, (Ed25519PrivateKey, Ed25519PublicKey)):
        raise ValueError(f"the key is a {type(loaded).__name__}, not an Ed25519 key; make a key pair with "
                         "python -m training.keygen")
    return loaded


def _warn_hmac(action: str, stacklevel: int) -> None:
    warnings.warn(f"{action} an artifact with a shared HMAC secret is deprecated: every verifier holding it can also "
                  "sign. Make an Ed25519 key pair (python -m training.keygen), sign with the private key "
                  "(training.fit --sign-key-env) and verify with the public one (--verify-key)",
                  HMACSignatureWarning, stacklevel=stacklevel)


def _signature(manifest: Mapping[str, Any], secret: Ed25519PrivateKey | bytes) -> dict[str, str]:
    """The ``signature`` field for a parsed manifest."""
    if isinstance(secret, Ed25519PrivateKey):
        return {"algorithm": SIGNATURE_ALGORITHM, "signature": secret.sign(signed_bytes(manifest)).hex()}
    mac = hmac.new(secret, signed_bytes(manifest), hashlib.sha256).hexdigest()
    return {"algorithm": HMAC_ALGORITHM, "mac": mac}


def _check_signature(manifest: Mapping[str, Any], secret: Ed25519PrivateKey | Ed25519PublicKey | bytes,
                     target: Path) -> None:
    """Refuse a manifest whose signature is missing, malformed or made with another key (or over other bytes).

    The algorithm comes from the key the caller holds: a public key accepts
    Ed25519 signatures only, a (deprecated) HMAC secret HMAC ones only.
    """
    signature = manifest.get("signature")
    if signature is None:
        raise ArtifactSignatureError(
            f"manifest {target} is not signed, but a key was given to verify it; refusing to unpickle an "
            "artifact nothing vouches for. Re-save it signed (training.fit --sign-key-env NAME), or load it "
            "without a key if unsigned artifacts are acceptable here")
    found = signature.get("algorithm") if isinstance(signature, Mapping) else None
    if isinstance(secret, bytes):
        if found == SIGNATURE_ALGORITHM:
            raise ArtifactSignatureError(
                f"manifest {target} is signed with Ed25519, but the key given is a shared HMAC secret; verify it "
                "with the signer's public key (--verify-key FILE)")
        if not (found == HMAC_ALGORITHM and isinstance(signature.get("mac"), str)
                and _HEX_DIGEST.fullmatch(signature["mac"])):
            raise ArtifactSignatureError(
                f"manifest {target} has a malformed signature (expected {{'algorithm': {HMAC_ALGORITHM!r}, "
                "'mac': 64 lowercase hex digits}); the manifest was changed after signing, re-save the artifact")
        _warn_hmac("verifying", 4)
        good = hmac.compare_digest(_signature(manifest, secret)["mac"], signature["mac"])
    else:
        if found == HMAC_ALGORITHM:
            raise ArtifactSignatureError(
                f"manifest {target} carries a shared-secret HMAC signature (deprecated), which a public key does "
                "not accept; re-sign it with an Ed25519 private key (training.fit --sign-key-env), or verify it "
                "with the HMAC secret (--verify-key-env) until then")
        if not (found == SIGNATURE_ALGORITHM and isinstance(signature.get("signature"), str)
                and _HEX_SIGNATURE.fullmatch(signature["signature"])):
            raise ArtifactSignatureError(
                f"manifest {target} has a malformed signature (expected {{'algorithm': {SIGNATURE_ALGORITHM!r}, "
                "'signature': 128 lowercase hex digits}); the manifest was changed after signing, re-save the "
                "artifact")
        public = secret.public_key() if isinstance(secret, Ed25519PrivateKey) else secret
        try:
            public.verify(bytes.fromhex(signature["signature"]), signed_bytes(manifest))
            good = True
        except InvalidSignature:
            good = False
    if not good:
        raise ArtifactSignatureError(
            f"signature of manifest {target} does not match the key: the manifest (or the payload digest it "
            "records) was changed after signing, or it was signed with another key; refusing to unpickle it. "
            "Use the key it was signed with, or re-save the artifact from a trusted source")


def _check_pin(expected_sha256: str) -> str:
    """A pinned payload digest as lowercase hex."""
    if not isinstance(expected_sha256, str):
        raise TypeError(f"expected_sha256 must be a str, got {type(expected_sha256).__name__}")
    pinned = expected_sha256.strip().lower()
    if not _HEX_DIGEST.fullmatch(pinned):
        raise ValueError(f"expected_sha256 must be 64 hex digits, got {expected_sha256!r}")
    return pinned


def _warn_unverified(path: Path, *, signed: bool) -> None:
    """Say once per process and path that nothing verified this artifact."""
    kind = "signed" if signed else "unsigned"
    with _WARNED_LOCK:
        seen = (str(path.resolve()), kind)
        if seen in _WARNED:
            return
        _WARNED.add(seen)
    if signed:
        message = (f"artifact {path} is signed, but no key was given, so its signature was not checked; "
                   "pass key= (CLIs: --verify-key FILE) to refuse a tampered artifact")
    else:
        message = (f"artifact {path} is unsigned: nothing shows it was not replaced; sign it "
                   "(training.fit --sign-key-env NAME) and verify it (key=, --verify-key FILE)")
    warnings.warn(message, UnsignedArtifactWarning, stacklevel=3)


# --------------------------------------------------------------------------- #
# versions
# --------------------------------------------------------------------------- #


def _environment_versions() -> dict[str, str | None]:
    """Versions of python and the packages whose objects may be pickled."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for distribution, module in _RECORDED.items():
        versions[distribution] = _installed_version(distribution, module)
    return versions


def _installed_version(distribution: str, module: str | None) -> str | None:
    """Version from the package metadata, else the module's ``__version__``.

    Metadata is read first because it does not import the package; the
    fallback covers packages on ``sys.path`` without metadata (a source
    checkout). ``None`` means not installed.
    """
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    if module is None:
        return None
    try:
        imported = __import__(module)
    except ImportError:
        return None
    version = getattr(imported, "__version__", None)
    return str(version) if version is not None else None


def _major_minor(version: str | None) -> tuple[int, int] | str | None:
    """``'1.6.1'`` -> ``(1, 6)``; unparseable strings are compared whole."""
    if version is None:
        return None
    match = re.match(r"\s*v?(\d+)\.(\d+)", str(version))
    return (int(match.group(1)), int(match.group(2))) if match else str(version)


def _version_mismatches(recorded: Mapping[str, Any]) -> list[str]:
    """One line per checked package whose major.minor version differs.

    A package the manifest does not mention (or records as not installed)
    cannot be inside the pickle, so it is not checked.
    """
    mismatches = []
    for distribution in _CHECKED:
        saved = recorded.get(distribution)
        if saved is None:
            continue
        installed = _installed_version(distribution, _RECORDED[distribution])
        if _major_minor(saved) != _major_minor(installed):
            shown = installed if installed is not None else "not installed"
            mismatches.append(f"{distribution} {saved} in the artifact vs {shown} installed")
    return mismatches


def _check_versions(recorded: Any, path: Path, *, strict: bool) -> None:
    """Raise (or warn) on library versions that make the pickle unreliable."""
    if not isinstance(recorded, Mapping):
        raise ValueError(f"manifest of artifact {path}: 'versions' must be an object, got {type(recorded).__name__}")
    mismatches = _version_mismatches(recorded)
    if not mismatches:
        return
    message = (
        f"artifact {path} was written with other library versions: {'; '.join(mismatches)}. "
        "Pickled scikit-learn estimators and LightGBM boosters are not portable across major.minor versions"
    )
    if strict:
        raise ValueError(
            f"{message}; retrain in this environment, install the recorded versions, "
            "or pass strict_versions=False to load it anyway"
        )
    warnings.warn(f"{message}; loading anyway because strict_versions=False", UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- #
# checks
# --------------------------------------------------------------------------- #


def _check_models(models: Sequence[str], obj: object) -> list[str]:
    """Validate ``models`` and that they match ``obj.models_`` if present."""
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence | np.ndarray):
        raise ValueError(f"models must be a sequence of str, got {type(models).__name__}; wrap a single name in a list")
    names = list(models)
    if not names:
        raise ValueError("models must not be empty")
    bad = [name for name in names if not isinstance(name, str)]
    if bad:
        raise ValueError(f"models must be str, got {bad[:5]!r}")
    names = [str(name) for name in names]  # np.str_ -> str for JSON
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"models must be unique; {duplicates} appear more than once")
    fitted = obj.models_ if isinstance(obj, _HasModels) else None
    if fitted is not None and [str(name) for name in fitted] != names:
        raise ValueError(f"models {names} differ from the object's models_ {list(fitted)}; pass models=obj.models_")
    return names


def _check_budgets(budgets: Sequence[float]) -> list[float]:
    """Validate ``budgets``: a sequence of finite numbers (bools refused)."""
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence | np.ndarray):
        raise ValueError(f"budgets must be a sequence of numbers, got {type(budgets).__name__}; "
                         "wrap a single budget in a list")
    values = []
    for position, budget in enumerate(budgets):
        if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, float, np.integer, np.floating)):
            raise ValueError(f"budgets must be numbers; position {position} is {budget!r}")
        if not math.isfinite(float(budget)):
            raise ValueError(f"budgets must be finite; position {position} is {budget!r}")
        values.append(float(budget))
    return values


def _refuse_foreign_manifest(path: Path, target: Path) -> None:
    """Refuse to overwrite the manifest of another artifact that still exists."""
    if not target.is_file():
        return
    try:
        other = json.loads(target.read_text(encoding="utf-8")).get("artifact_file")
    except (OSError, ValueError, AttributeError):
        return  # unreadable: nothing trustworthy to protect
    if isinstance(other, str) and other != path.name and (path.parent / other).is_file():
        raise ValueError(
            f"cannot write artifact {path}: its manifest path {target} already belongs to artifact "
            f"{path.parent / other}; names that differ only in their last suffix share a manifest, choose another name"
        )


def _nesting(value: Any) -> int:
    """Depth of nested lists and dicts in a parsed JSON value, found without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_fields(manifest: Mapping[str, Any], target: Path) -> None:
    """Name every required field that the manifest lacks, and refuse the two whose type the loader relies on.

    ``artifact_file`` becomes a path and ``models`` is compared with the
    loaded object's, so a damaged value would fail deep inside the loader
    (an over-long file name is an ``OSError``, a number is not iterable)
    instead of here, with the file named.
    """
    missing = [field for field in _REQUIRED_FIELDS if field not in manifest]
    if missing:
        raise ValueError(f"manifest {target} lacks the fields {missing}; the file is damaged, re-save the artifact")
    name = manifest["artifact_file"]
    if not (isinstance(name, str) and name and len(name.encode("utf-8", "surrogatepass")) <= 255
            and Path(name).name == name and "\x00" not in name):
        raise ValueError(f"manifest {target} has artifact_file {str(name)[:80]!r}, which is not a file name; the file "
                         "is damaged, re-save the artifact")
    models = manifest["models"]
    if not (isinstance(models, list) and all(isinstance(model, str) for model in models)):
        raise ValueError(f"manifest {target} has models {str(models)[:80]!r}, not a list of model names; the file is "
                         "damaged, re-save the artifact")


def _check_format_version(manifest: Mapping[str, Any], target: Path) -> None:
    """Refuse another format version: its layout may mean something else."""
    found = manifest["format_version"]
    if isinstance(found, bool) or found != FORMAT_VERSION:
        raise ValueError(
            f"manifest {target} has format_version {found!r}, but this cascade-router release reads "
            f"format_version {FORMAT_VERSION}; retrain and re-save the artifact with this release, "
            "or load it with the release that wrote it"
        )


def _check_sha256(payload: bytes, expected: Any, path: Path) -> None:
    """Compare the payload digest with the manifest before unpickling."""
    actual = hashlib.sha256(payload).hexdigest()
    if not isinstance(expected, str) or expected.lower() != actual:
        raise ValueError(
            f"artifact {path} sha256 mismatch: expected {expected}, got {actual}; "
            "the file is corrupted or was replaced"
        )


def _unpickle(payload: bytes, path: Path) -> object:
    """joblib.load the payload; any failure becomes one clear ValueError."""
    try:
        return joblib.load(io.BytesIO(payload))
    except Exception as exc:
        raise ValueError(
            f"could not unpickle artifact {path}: {type(exc).__name__}: {exc}; "
            "a class it contains may have moved or changed, retrain and re-save it with this release"
        ) from exc


@runtime_checkable
class _HasModels(Protocol):
    """An object that routes between named models (a router, an estimator): its ``models_`` must be the manifest's.

    Any picklable object can be saved; one with ``models_`` is checked against the ``models`` listed.
    """

    models_: Sequence[str]


def _check_loaded_models(obj: object, models: Any, path: Path) -> None:
    """The object's ``models_`` must be the manifest's, in the same order."""
    if not isinstance(obj, _HasModels):
        return
    fitted = obj.models_
    if [str(name) for name in fitted] != list(models):
        raise ValueError(
            f"artifact {path} holds an object with models_ {list(fitted)} but its manifest lists {list(models)}; "
            "the artifact and manifest do not belong together, re-save the artifact"
        )


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #


def _json_default(value: Any) -> Any:
    """Turn NumPy scalars and arrays and paths into JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _to_json(manifest: Mapping[str, Any]) -> str:
    """Serialise strictly (no NaN or infinity), naming the offending field."""
    for field, value in manifest.items():
        try:
            json.dumps(value, default=_json_default, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"manifest field {field!r} cannot be written as JSON: {exc}; "
                "use str, numbers, bools, None, lists and dicts with str keys (NaN and infinity as None)"
            ) from exc
    return json.dumps(manifest, default=_json_default, allow_nan=False, indent=2, ensure_ascii=False) + "\n"


def _sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dump(obj: object, handle: Any, path: Path) -> None:
    """joblib.dump to an open file; a pickling failure names the artifact."""
    try:
        joblib.dump(obj, handle, compress=COMPRESS)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # OSError (disk full) passes as is
        raise TypeError(
            f"could not pickle the object for artifact {path}: {type(exc).__name__}: {exc}; "
            "fitted objects must hold plain arrays and scalars (no lambdas, open files or compiled state)"
        ) from exc
