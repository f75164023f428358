"""Signed artifacts: what loads, and every refusal happening before anything is unpickled.

The refusals are proved with a payload whose unpickling creates a file: a
refused load must leave no file behind. The same payload loaded with the
right key does create it, so the proof is not vacuous. Artifacts are
signed with an Ed25519 private key and verified with its public key
(issue 30); the deprecated HMAC signatures of earlier releases are tested
at the end.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from training import artifact
from training.artifact import (
    MIN_KEY_BYTES,
    ArtifactSignatureError,
    HMACSignatureWarning,
    UnsignedArtifactWarning,
    load_artifact,
    manifest_path,
    new_key_pair,
    read_manifest,
    save_artifact,
    signed_bytes,
)

KEY, PUBLIC = (text.decode() for text in new_key_pair())  # sign with KEY, verify with PUBLIC
OTHER_KEY, OTHER_PUBLIC = (text.decode() for text in new_key_pair())
SECRET = "k3y-" + "0123456789abcdef" * 3  # a (deprecated) shared HMAC secret, 52 bytes
MODELS = ["small", "large"]
#: The manifest fields of format version 3 before signatures existed.
UNSIGNED_FIELDS = {"format", "format_version", "created_at", "versions", "models", "budgets", "feature_schema",
                   "data_fingerprint", "metrics", "extra", "artifact_file", "sha256"}


class Bomb:
    """Unpickling it creates the file ``marker``: the witness that the payload's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-code-ran"


@pytest.fixture
def bomb(tmp_path, marker) -> Path:
    """A signed artifact whose payload, when unpickled, creates ``marker``."""
    folder = tmp_path / "bomb"
    folder.mkdir()
    path = folder / "router.joblib"
    save_artifact(Bomb(marker), path, models=MODELS, budgets=[0.001], key=KEY)
    assert not marker.exists()
    return path


@pytest.fixture
def benign(tmp_path) -> Path:
    """Another artifact signed with the same key, under the same file name."""
    folder = tmp_path / "benign"
    folder.mkdir()
    path = folder / "router.joblib"
    save_artifact({"weights": [1.0, 2.0]}, path, models=MODELS, budgets=[0.001], key=KEY)
    return path


def _manifest(path: Path) -> dict:
    return json.loads(manifest_path(path).read_text())


def _write_manifest(path: Path, manifest: dict) -> None:
    manifest_path(path).write_text(json.dumps(manifest, indent=2))


def _refused(path: Path, marker: Path, match: str, **kwargs) -> ValueError:
    with pytest.raises(ValueError, match=match) as caught:
        load_artifact(path, **kwargs)
    assert not marker.exists(), "the payload was unpickled before the refusal"
    return caught.value


# --------------------------------------------------------------------------- #
# what loads
# --------------------------------------------------------------------------- #


def test_signed_artifact_loads_with_its_key_and_the_witness_works(bomb, marker):
    manifest = read_manifest(bomb)
    assert set(manifest) == UNSIGNED_FIELDS | {"signature"}
    assert manifest["signature"]["algorithm"] == "ed25519"
    assert len(manifest["signature"]["signature"]) == 128
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified load says nothing
        load_artifact(bomb, key=PUBLIC)
    assert marker.exists(), "the witness payload must create its file when it is unpickled"


def test_key_as_bytes_or_str_is_the_same_key(benign):
    assert load_artifact(benign, key=PUBLIC.encode())[0] == {"weights": [1.0, 2.0]}


def test_signature_is_the_ed25519_signature_of_the_canonical_manifest(benign):
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    manifest = read_manifest(benign)
    load_pem_public_key(PUBLIC.encode()).verify(bytes.fromhex(manifest["signature"]["signature"]),
                                                signed_bytes(manifest))  # raises if it does not verify
    assert b'"signature"' not in signed_bytes(manifest) and b'"mac"' not in signed_bytes(manifest)
    assert signed_bytes(manifest) == signed_bytes(dict(reversed(list(manifest.items()))))  # key order is irrelevant


def test_reindented_manifest_still_verifies(benign):
    manifest_path(benign).write_text(json.dumps(_manifest(benign), indent=7, sort_keys=True))
    assert load_artifact(benign, key=PUBLIC)[0] == {"weights": [1.0, 2.0]}


def test_unsigned_artifact_loads_without_key_and_warns_once(tmp_path):
    path = tmp_path / "plain.joblib"
    save_artifact({"a": 1}, path, models=["m"], budgets=[])
    assert set(read_manifest(path)) == UNSIGNED_FIELDS, "an unsigned manifest is exactly the old format"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_artifact(path)[0] == {"a": 1}
        assert load_artifact(path)[0] == {"a": 1}
    unsigned = [w for w in caught if issubclass(w.category, UnsignedArtifactWarning)]
    assert len(unsigned) == 1, "once per process and path"
    assert "is unsigned" in str(unsigned[0].message) and "--sign-key-env" in str(unsigned[0].message)
    assert unsigned[0].filename == __file__, "the warning points at the caller"


def test_signed_artifact_without_key_loads_and_says_it_was_not_checked(benign):
    with pytest.warns(UnsignedArtifactWarning, match="is signed, but no key was given, so its signature was not"):
        assert load_artifact(benign)[0] == {"weights": [1.0, 2.0]}


def test_old_unsigned_artifact_is_refused_with_a_key(tmp_path, marker):
    path = tmp_path / "old.joblib"
    save_artifact(Bomb(marker), path, models=MODELS, budgets=[0.001])  # as every release before signatures wrote it
    error = _refused(path, marker, "is not signed, but a key was given", key=PUBLIC)
    assert isinstance(error, ArtifactSignatureError)
    assert "--sign-key-env" in str(error)


# --------------------------------------------------------------------------- #
# refusals, before unpickling
# --------------------------------------------------------------------------- #


def test_every_flipped_payload_byte_is_refused(bomb, marker):
    payload = bomb.read_bytes()
    for position in range(len(payload)):
        flipped = bytearray(payload)
        flipped[position] ^= 0x01
        bomb.write_bytes(bytes(flipped))
        _refused(bomb, marker, "sha256 mismatch", key=PUBLIC)


def test_every_flipped_manifest_byte_is_refused(bomb, marker):
    text = manifest_path(bomb).read_bytes()
    for position in range(len(text)):
        flipped = bytearray(text)
        flipped[position] ^= 0x01
        manifest_path(bomb).write_bytes(bytes(flipped))
        with pytest.raises((ValueError, FileNotFoundError)):
            load_artifact(bomb, key=PUBLIC)
        assert not marker.exists(), f"flipping manifest byte {position} let the payload be unpickled"


def test_payload_replaced_with_a_consistent_sha256_is_refused(bomb, benign, marker):
    """Whoever can write the directory can also fix the digest: the MAC is what stops them."""
    benign.write_bytes(bomb.read_bytes())
    manifest = _manifest(benign)
    manifest["sha256"] = hashlib.sha256(bomb.read_bytes()).hexdigest()
    _write_manifest(benign, manifest)
    error = _refused(benign, marker, "does not match the key", key=PUBLIC)
    assert isinstance(error, ArtifactSignatureError)


def test_manifest_swapped_in_from_another_signed_artifact_is_refused(bomb, benign, marker):
    manifest_path(bomb).write_bytes(manifest_path(benign).read_bytes())  # valid signature, same key and file name
    _refused(bomb, marker, "sha256 mismatch", key=PUBLIC)


def test_missing_signature_with_a_key_is_refused(bomb, marker):
    manifest = _manifest(bomb)
    del manifest["signature"]
    _write_manifest(bomb, manifest)
    _refused(bomb, marker, "is not signed, but a key was given", key=PUBLIC)


def test_wrong_key_is_refused(bomb, marker):
    error = _refused(bomb, marker, "does not match the key", key=OTHER_PUBLIC)
    assert isinstance(error, ArtifactSignatureError)
    assert "BEGIN" not in str(error), "errors never show a key"


def test_artifact_signed_with_another_key_is_refused(tmp_path, marker):
    path = tmp_path / "router.joblib"
    save_artifact(Bomb(marker), path, models=MODELS, budgets=[0.001], key=OTHER_KEY)
    _refused(path, marker, "does not match the key", key=PUBLIC)


@pytest.mark.parametrize("signature", [
    None,
    "deadbeef",
    {"algorithm": "none", "signature": "0" * 128},
    {"algorithm": "ed25519"},
    {"algorithm": "ed25519", "signature": 7},
    {"algorithm": "ed25519", "signature": "0" * 127},
    {"algorithm": "ed25519", "mac": "0" * 128},
    [1, 2],
])
def test_malformed_signature_is_refused(bomb, marker, signature):
    manifest = _manifest(bomb)
    manifest["signature"] = signature
    _write_manifest(bomb, manifest)
    expected = "is not signed" if signature is None else "malformed signature"
    error = _refused(bomb, marker, expected, key=PUBLIC)
    assert isinstance(error, ArtifactSignatureError)


def test_uppercase_signature_is_malformed_not_a_second_spelling(bomb, marker):
    manifest = _manifest(bomb)
    manifest["signature"]["signature"] = manifest["signature"]["signature"].upper()
    _write_manifest(bomb, manifest)
    _refused(bomb, marker, "malformed signature", key=PUBLIC)


def test_signed_field_change_is_refused(bomb, marker):
    manifest = _manifest(bomb)
    manifest["models"] = list(reversed(manifest["models"]))
    _write_manifest(bomb, manifest)
    _refused(bomb, marker, "does not match the key", key=PUBLIC)


def test_format_version_stays_strict_on_signed_manifests(bomb, marker):
    manifest = _manifest(bomb)
    manifest["format_version"] = artifact.FORMAT_VERSION + 1
    _write_manifest(bomb, manifest)
    _refused(bomb, marker, f"has format_version {artifact.FORMAT_VERSION + 1}", key=PUBLIC)


def test_replayed_older_artifact_is_refused_only_when_pinned(tmp_path, bomb, benign, marker):
    """A validly signed older artifact verifies (replay): the caller's sha256 pin is what refuses it."""
    pinned = read_manifest(benign)["sha256"]
    for name in ("router.joblib", "router.manifest.json"):  # the old signed pair put back in place
        (benign.parent / name).write_bytes((bomb.parent / name).read_bytes())
    error = _refused(benign, marker, "is not the one expected", key=PUBLIC, expected_sha256=pinned)
    assert pinned in str(error)


def test_pin_is_checked_without_a_key_too(benign, marker, bomb):
    _refused(bomb, marker, "is not the one expected", expected_sha256=read_manifest(benign)["sha256"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pinned payload was vouched for: no unsigned-artifact warning
        loaded, _ = load_artifact(benign, expected_sha256=read_manifest(benign)["sha256"].upper())
    assert loaded == {"weights": [1.0, 2.0]}


# --------------------------------------------------------------------------- #
# keys
# --------------------------------------------------------------------------- #


def test_short_key_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=f"fewer than {MIN_KEY_BYTES}.*training.keygen"):
        save_artifact({}, tmp_path / "a.joblib", models=["m"], budgets=[], key="short")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key, error", [("", ValueError), ("x" * (MIN_KEY_BYTES - 1), ValueError),
                                        (12345, TypeError), (None, None)])
def test_key_types_and_lengths_on_load(benign, key, error):
    if error is None:
        with pytest.warns(UnsignedArtifactWarning):
            load_artifact(benign, key=key)
        return
    with pytest.raises(error, match="key"):
        load_artifact(benign, key=key)


@pytest.mark.parametrize("pin, error", [("xyz", ValueError), (123, TypeError)])
def test_malformed_pin_is_refused(benign, pin, error):
    with pytest.raises(error, match="expected_sha256"):
        load_artifact(benign, expected_sha256=pin)


# --------------------------------------------------------------------------- #
# load_router and the command lines
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def signed_router(router, tmp_path_factory) -> Path:
    """The shared small router, re-saved signed with KEY."""
    path = tmp_path_factory.mktemp("signed") / "router.joblib"
    save_artifact(router, path, models=list(router.models_), budgets=[p.budget for p in router.policies], key=KEY)
    return path


def test_load_router_verifies_with_key(signed_router, router):
    from training.router import load_router, load_router_with_sha256

    loaded, sha256 = load_router_with_sha256(signed_router, key=PUBLIC, warm_up=False)
    assert loaded.models_ == router.models_
    assert sha256 == hashlib.sha256(signed_router.read_bytes()).hexdigest()
    with pytest.raises(ArtifactSignatureError, match="does not match the key"):
        load_router(signed_router, key=OTHER_PUBLIC, warm_up=False)


@pytest.mark.slow
def test_fit_signs_with_the_key_from_the_environment(tmp_path, monkeypatch, capsys):
    from training.fit import main
    from training.router import load_router

    monkeypatch.setenv("ROUTER_SIGNING_KEY", KEY)  # the private key's PEM
    out = tmp_path / "router.joblib"
    code = main(["--n-queries", "400", "--estimator", "linear", "--budget", "0.001", "--out", str(out),
                 "--report", str(tmp_path / "report"), "--quiet", "--sign-key-env", "ROUTER_SIGNING_KEY"])
    assert code == 0
    assert "signed)" in capsys.readouterr().out
    assert json.loads((tmp_path / "report" / "report.json").read_text())["artifact"]["signed"] is True
    assert "PRIVATE" not in manifest_path(out).read_text() + (tmp_path / "report" / "report.json").read_text()
    assert read_manifest(out)["signature"]["algorithm"] == "ed25519"
    assert load_router(out, key=PUBLIC, warm_up=False).models_ == tuple(read_manifest(out)["models"])
    with pytest.raises(ArtifactSignatureError):
        load_router(out, key=OTHER_PUBLIC, warm_up=False)


@pytest.mark.parametrize("value", [None, ""])
def test_fit_with_an_unset_or_empty_key_variable_is_a_one_line_error(tmp_path, monkeypatch, capsys, value):
    from training.fit import main

    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    if value is not None:
        monkeypatch.setenv("NO_SUCH_KEY", value)
    code = main(["--out", str(tmp_path / "router.joblib"), "--report", str(tmp_path / "report"), "--quiet",
                 "--sign-key-env", "NO_SUCH_KEY"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1
    assert error[0].startswith("error: --sign-key-env NO_SUCH_KEY: the environment variable NO_SUCH_KEY is "
                               + ("unset" if value is None else "empty"))
    assert list(tmp_path.iterdir()) == [], "nothing is trained or written"


def test_fit_with_a_short_key_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from training.fit import main

    monkeypatch.setenv("SHORT_KEY", "hunter2")
    code = main(["--out", str(tmp_path / "router.joblib"), "--quiet", "--sign-key-env", "SHORT_KEY"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "fewer than 32" in error[0] and "hunter2" not in error[0]
    assert "training.keygen" in error[0]


def test_a_key_given_as_the_variable_name_is_refused_without_being_echoed(tmp_path, capsys):
    from training.fit import main

    assert main(["--out", str(tmp_path / "router.joblib"), "--quiet", "--sign-key-env", SECRET]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "takes the name of an environment variable" in error[0]
    assert SECRET not in error[0]


def _score(artifact_path: Path, tmp_path: Path, *extra: str) -> tuple[int, list[str]]:
    from training.serving.batch import main
    from training.synthetic import make_benchmark

    source = tmp_path / "traffic.parquet"
    if not source.exists():
        make_benchmark(40, seed=5).to_parquet(source)
    output = tmp_path / f"decisions{len(list(tmp_path.iterdir()))}.parquet"
    code = main(["--artifact", str(artifact_path), "--input", str(source), "--output", str(output), "--quiet", *extra])
    return code, output


def _public_file(folder: Path, text: str = PUBLIC) -> Path:
    path = folder / f"public-{hashlib.sha256(text.encode()).hexdigest()[:8]}.pem"
    path.write_text(text)
    return path


@pytest.mark.parametrize("workers", ["1", "2"])
def test_score_verifies_with_the_public_key_file(signed_router, tmp_path, workers):
    keys = tmp_path.parent / f"{tmp_path.name}-keys"
    keys.mkdir()
    code, output = _score(signed_router, tmp_path, "--verify-key", str(_public_file(keys)), "--workers", workers)
    assert code == 0 and output.is_file()


def test_score_with_the_wrong_key_or_an_unsigned_artifact_is_a_one_line_error(signed_router, artifact, tmp_path,
                                                                               tmp_path_factory, capsys):
    wrong = _public_file(tmp_path_factory.mktemp("keys"), OTHER_PUBLIC)
    code, output = _score(signed_router, tmp_path, "--verify-key", str(wrong))
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "does not match the key" in error[0] and not output.exists()
    code, _ = _score(artifact, tmp_path, "--verify-key", str(wrong))  # the shared artifact is unsigned
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "is not signed, but a key was given" in error[0]


def test_score_require_signed_without_a_key_is_a_one_line_error(signed_router, tmp_path, capsys):
    code, output = _score(signed_router, tmp_path, "--require-signed")
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "--require-signed" in error[0] and "--verify-key" in error[0]
    assert not output.exists()


def test_score_refuses_a_private_key_as_the_verification_key(signed_router, tmp_path, tmp_path_factory, capsys):
    private = tmp_path_factory.mktemp("keys") / "private.pem"
    private.write_text(KEY)
    code, _ = _score(signed_router, tmp_path, "--verify-key", str(private))
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "public key" in error[0] and "BEGIN" not in error[0]


def test_workers_load_only_the_payload_the_parent_verified(signed_router, router):
    from training.router import load_router

    with pytest.raises(ValueError, match="is not the one expected"):
        load_router(signed_router, expected_sha256="0" * 64, warm_up=False)


# --------------------------------------------------------------------------- #
# a verifier cannot sign (issue 30)
# --------------------------------------------------------------------------- #


def test_a_public_key_cannot_sign(tmp_path):
    for key in (PUBLIC, PUBLIC.encode(), Ed25519PrivateKey.generate().public_key()):
        with pytest.raises(TypeError, match="public key verifies artifacts but cannot sign"):
            save_artifact({}, tmp_path / "a.joblib", models=["m"], budgets=[], key=key)
    assert list(tmp_path.iterdir()) == []


def test_what_a_public_key_holder_can_forge_is_refused(bomb, marker):
    """Everything one holding only the public key can write: an HMAC under the public key's bytes (algorithm
    confusion), a signature by a key of their own, and the genuine signature moved onto a changed manifest."""
    import hmac

    genuine = _manifest(bomb)
    forged = dict(genuine, models=list(reversed(genuine["models"])))
    for name, signature in [
        ("hmac keyed with the public key", {"algorithm": "hmac-sha256", "mac": hmac.new(
            PUBLIC.encode(), signed_bytes(forged), hashlib.sha256).hexdigest()}),
        ("own key", {"algorithm": "ed25519",
                     "signature": Ed25519PrivateKey.generate().sign(signed_bytes(forged)).hex()}),
        ("genuine signature", genuine["signature"]),
    ]:
        _write_manifest(bomb, {**forged, "signature": signature})
        with pytest.raises(ArtifactSignatureError):
            load_artifact(bomb, key=PUBLIC)
        assert not marker.exists(), name


def test_keys_may_be_objects(tmp_path):
    private = Ed25519PrivateKey.generate()
    path = tmp_path / "router.joblib"
    save_artifact({"a": 1}, path, models=["m"], budgets=[], key=private)
    public = private.public_key()
    assert isinstance(public, Ed25519PublicKey)
    assert load_artifact(path, key=public)[0] == {"a": 1}


@pytest.mark.parametrize("text", ["-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
                                  "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_damaged_pem_is_a_one_line_value_error_without_the_key(benign, text):
    with pytest.raises(ValueError, match="not an unencrypted Ed25519 key") as raised:
        load_artifact(benign, key=text)
    assert "AAAA" not in str(raised.value) and "\n" not in str(raised.value)


def test_keygen_writes_a_pair_that_signs_and_verifies_and_never_overwrites(tmp_path, capsys):
    import stat

    from training.keygen import main

    private, public = tmp_path / "signing.pem", tmp_path / "verify.pem"
    assert main([str(private), str(public)]) == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    path = tmp_path / "router.joblib"
    save_artifact({"a": 1}, path, models=["m"], budgets=[], key=private.read_text())
    assert load_artifact(path, key=public.read_bytes())[0] == {"a": 1}
    before = private.read_bytes()
    assert main([str(private), str(tmp_path / "other.pem")]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert private.read_bytes() == before and not (tmp_path / "other.pem").exists()


# --------------------------------------------------------------------------- #
# migration: HMAC signatures of earlier releases (deprecated)
# --------------------------------------------------------------------------- #


@pytest.fixture
def legacy(tmp_path, marker) -> Path:
    """An artifact signed with a shared HMAC secret, as earlier releases wrote it."""
    path = tmp_path / "legacy" / "router.joblib"
    path.parent.mkdir()
    with pytest.warns(HMACSignatureWarning, match="deprecated"):
        save_artifact(Bomb(marker), path, models=MODELS, budgets=[0.001], key=SECRET)
    return path


def test_hmac_signed_artifact_still_verifies_with_its_secret_and_a_warning(legacy, marker):
    import hmac

    manifest = read_manifest(legacy)
    assert manifest["signature"] == {"algorithm": "hmac-sha256", "mac": hmac.new(
        SECRET.encode(), signed_bytes(manifest), hashlib.sha256).hexdigest()}
    with pytest.warns(HMACSignatureWarning, match="--verify-key"):
        load_artifact(legacy, key=SECRET)
    assert marker.exists()


def test_hmac_signed_artifact_with_another_secret_or_a_flipped_byte_is_refused(legacy, marker):
    with pytest.warns(HMACSignatureWarning):
        _refused(legacy, marker, "does not match the key", key="x" * 40)
    manifest = _manifest(legacy)
    manifest["models"] = list(reversed(manifest["models"]))
    _write_manifest(legacy, manifest)
    with pytest.warns(HMACSignatureWarning):
        _refused(legacy, marker, "does not match the key", key=SECRET)


def test_algorithms_never_cross(legacy, bomb, marker):
    """The key the caller holds picks the algorithm: a public key refuses HMAC, a secret refuses Ed25519."""
    _refused(legacy, marker, "HMAC signature .deprecated., which a public key does not accept", key=PUBLIC)
    _refused(bomb, marker, "signed with Ed25519, but the key given is a shared HMAC secret", key=SECRET)


@pytest.mark.slow
def test_fit_with_a_legacy_secret_still_signs_with_a_warning(tmp_path, monkeypatch, capsys):
    from training.fit import main

    monkeypatch.setenv("LEGACY_KEY", SECRET)
    out = tmp_path / "router.joblib"
    assert main(["--n-queries", "400", "--estimator", "linear", "--budget", "0.001", "--out", str(out),
                 "--report", str(tmp_path / "report"), "--quiet", "--sign-key-env", "LEGACY_KEY"]) == 0
    # the command line shows the HMACSignatureWarning as one 'warning:' line (training.cli.one_line_warnings)
    assert any(line.startswith("warning:") and "HMAC" in line for line in capsys.readouterr().err.splitlines())
    assert read_manifest(out)["signature"]["algorithm"] == "hmac-sha256"
