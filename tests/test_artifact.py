"""Artifact format: round trip, manifest contents, and every refusal of the loader."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression

from training import artifact
from training.artifact import (
    FORMAT,
    FORMAT_VERSION,
    UnsignedArtifactWarning,
    load_artifact,
    manifest_path,
    read_manifest,
    save_artifact,
)

MODELS = ("small", "medium", "large")
BUDGETS = (0.001, 0.01)


@dataclass
class FakeRouter:
    """Stands in for the real router: arrays, a fitted sklearn model, models_."""

    weights: np.ndarray
    classifier: LogisticRegression
    models_: tuple[str, ...] = MODELS
    notes: dict = field(default_factory=dict)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 4))
    labels = (features[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(int)
    return features, labels


@pytest.fixture
def router(data) -> FakeRouter:
    features, labels = data
    rng = np.random.default_rng(1)
    return FakeRouter(rng.normal(size=(3, 5)), LogisticRegression().fit(features, labels), notes={"k": 1})


@pytest.fixture
def saved(tmp_path, router) -> Path:
    path = tmp_path / "router.joblib"
    save_artifact(
        router,
        path,
        models=MODELS,
        budgets=BUDGETS,
        feature_schema={"columns": ["a", "b", "c", "d"], "dtype": "float64"},
        data_fingerprint="f" * 64,
        metrics={"auc": np.float64(0.75), "n": np.int64(60)},
        extra={"git": "abc123"},
    )
    return path


def _edit_manifest(path: Path, **changes) -> None:
    """Rewrite fields of an artifact's manifest (the sha covers only the payload)."""
    target = manifest_path(path)
    manifest = json.loads(target.read_text())
    for key, value in changes.items():
        if key == "versions":
            manifest["versions"].update(value)
        else:
            manifest[key] = value
    target.write_text(json.dumps(manifest))


def _replace_payload(path: Path, payload: bytes) -> None:
    """Swap the payload bytes and record their true sha256, as a consistent writer would."""
    path.write_bytes(payload)
    _edit_manifest(path, sha256=hashlib.sha256(payload).hexdigest())


def _listing(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


# --------------------------------------------------------------------------- #
# round trip and manifest
# --------------------------------------------------------------------------- #


def test_round_trip_preserves_arrays_and_predictions(saved, router, data):
    features, _ = data
    loaded, manifest = load_artifact(saved)
    assert isinstance(loaded, FakeRouter)
    assert loaded is not router
    np.testing.assert_array_equal(loaded.weights, router.weights)
    np.testing.assert_array_equal(loaded.classifier.predict(features), router.classifier.predict(features))
    np.testing.assert_array_equal(
        loaded.classifier.predict_proba(features), router.classifier.predict_proba(features)
    )
    assert loaded.models_ == MODELS
    assert loaded.notes == {"k": 1}
    assert manifest == read_manifest(saved)


def test_manifest_has_every_field(saved):
    manifest = read_manifest(saved)
    assert set(manifest) == {
        "format", "format_version", "created_at", "versions", "models", "budgets", "feature_schema",
        "data_fingerprint", "metrics", "extra", "artifact_file", "sha256",
    }  # fmt: skip
    assert manifest["format"] == FORMAT == "cascade-router-artifact"
    assert manifest["format_version"] == FORMAT_VERSION == 3
    created = datetime.fromisoformat(manifest["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=5)
    versions = manifest["versions"]
    assert versions["scikit-learn"] == sklearn.__version__
    assert versions["numpy"] == np.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", versions["python"])
    assert versions["cascade-router"]
    assert {"lightgbm", "numba", "joblib", "scipy"} <= set(versions)
    assert manifest["models"] == list(MODELS)
    assert manifest["budgets"] == list(BUDGETS)
    assert manifest["feature_schema"] == {"columns": ["a", "b", "c", "d"], "dtype": "float64"}
    assert manifest["data_fingerprint"] == "f" * 64
    assert manifest["metrics"] == {"auc": 0.75, "n": 60}  # NumPy scalars written as JSON numbers
    assert manifest["extra"] == {"git": "abc123"}
    assert manifest["artifact_file"] == "router.joblib"
    assert manifest["sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()


def test_payload_is_compressed_joblib(saved):
    assert saved.read_bytes()[:1] == b"\x78"  # zlib header written by joblib compress=3


def test_manifest_path_replaces_last_suffix(tmp_path):
    assert manifest_path(tmp_path / "router.joblib") == tmp_path / "router.manifest.json"
    assert manifest_path(tmp_path / "router.v2.joblib") == tmp_path / "router.v2.manifest.json"
    assert manifest_path(tmp_path / "router") == tmp_path / "router.manifest.json"
    assert manifest_path(tmp_path / "router.manifest.json") == tmp_path / "router.manifest.json"


def test_save_returns_manifest_path_and_writes_only_two_files(tmp_path, router):
    returned = save_artifact(router, tmp_path / "router.joblib", models=MODELS, budgets=BUDGETS)
    assert returned == tmp_path / "router.manifest.json"
    assert _listing(tmp_path) == ["router.joblib", "router.manifest.json"]


def test_optional_fields_default_to_null(tmp_path):
    path = tmp_path / "plain.joblib"
    save_artifact({"a": 1}, path, models=["m"], budgets=[])
    manifest = read_manifest(path)
    assert [manifest[key] for key in ("feature_schema", "data_fingerprint", "metrics", "extra")] == [None] * 4
    assert load_artifact(path)[0] == {"a": 1}


def test_read_manifest_does_not_unpickle(saved):
    _replace_payload(saved, b"not a pickle at all")
    assert read_manifest(saved)["models"] == list(MODELS)
    assert read_manifest(manifest_path(saved))["models"] == list(MODELS)


def test_read_manifest_ignores_format_version(saved):
    _edit_manifest(saved, format_version=FORMAT_VERSION + 1)
    assert read_manifest(saved)["format_version"] == FORMAT_VERSION + 1


def test_files_get_umask_mode_not_owner_only(tmp_path, router):
    previous = os.umask(0o022)
    try:
        path = tmp_path / "router.joblib"
        save_artifact(router, path, models=MODELS, budgets=BUDGETS)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
    assert manifest_path(path).stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- #
# refusals of the loader
# --------------------------------------------------------------------------- #


def test_corrupted_payload_is_a_sha256_mismatch(saved):
    payload = bytearray(saved.read_bytes())
    expected = hashlib.sha256(payload).hexdigest()
    payload[len(payload) // 2] ^= 0xFF
    payload[-1] ^= 0x01
    saved.write_bytes(bytes(payload))
    actual = hashlib.sha256(payload).hexdigest()
    with pytest.raises(ValueError, match="sha256 mismatch") as caught:
        load_artifact(saved)
    message = str(caught.value)
    assert str(saved) in message
    assert f"expected {expected}, got {actual}" in message
    assert "corrupted or was replaced" in message


def test_wrong_sha256_in_manifest(saved):
    _edit_manifest(saved, sha256="0" * 64)
    with pytest.raises(ValueError, match=f"expected {'0' * 64}, got {hashlib.sha256(saved.read_bytes()).hexdigest()}"):
        load_artifact(saved)


def test_other_format_version_is_refused(saved):
    _edit_manifest(saved, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match=f"format_version {FORMAT_VERSION + 1}") as caught:
        load_artifact(saved)
    message = str(caught.value)
    assert f"reads format_version {FORMAT_VERSION}" in message
    assert "retrain" in message and "release that wrote it" in message


# What a format-1 payload pickles: a class from a package this release no longer has.
_FORMAT_1_PAYLOAD = b"ctraining.table\nRoutingTable\n(tR."


@pytest.mark.parametrize("drop", [(), ("versions", "artifact_file")])
def test_format_version_1_is_refused_before_unpickling(saved, monkeypatch, drop):
    assert importlib.util.find_spec("training.table") is None  # moved to estimators.table
    _replace_payload(saved, _FORMAT_1_PAYLOAD)
    with pytest.raises(ValueError, match="could not unpickle"):  # what loading it would give
        artifact._unpickle(_FORMAT_1_PAYLOAD, saved)
    _edit_manifest(saved, format_version=1)
    manifest = json.loads(manifest_path(saved).read_text())
    for key in drop:  # a manifest of another version may lack fields: the version is still named
        del manifest[key]
    manifest_path(saved).write_text(json.dumps(manifest))

    def unpickle(payload, path):
        raise AssertionError("a format-1 payload must not be unpickled")

    monkeypatch.setattr(artifact, "_unpickle", unpickle)
    with pytest.raises(ValueError, match="has format_version 1, but this cascade-router release reads") as caught:
        load_artifact(saved)
    message = str(caught.value)
    assert str(manifest_path(saved)) in message
    assert f"reads format_version {FORMAT_VERSION}" in message
    assert "retrain and re-save the artifact" in message
    assert read_manifest(saved)["format_version"] == 1  # listing tools still read it


@pytest.mark.parametrize("version", ["1", None, True])
def test_malformed_format_version_is_refused(saved, version):
    _edit_manifest(saved, format_version=version)
    with pytest.raises(ValueError, match="format_version"):
        load_artifact(saved)


def test_wrong_format_is_refused(saved):
    _edit_manifest(saved, format="some-other-tool")
    with pytest.raises(ValueError, match="'some-other-tool'.*not a cascade-router artifact"):
        load_artifact(saved)
    with pytest.raises(ValueError, match="not a cascade-router artifact"):
        read_manifest(saved)


def test_missing_manifest(saved):
    manifest_path(saved).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(manifest_path(saved)))):
        load_artifact(saved)


def test_missing_payload(saved):
    saved.unlink()
    with pytest.raises(FileNotFoundError, match=f"artifact {re.escape(str(saved))} not found"):
        load_artifact(saved)


def test_manifest_that_is_not_json(saved):
    manifest_path(saved).write_text('{"format": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_artifact(saved)


def test_manifest_missing_fields(saved):
    manifest = json.loads(manifest_path(saved).read_text())
    del manifest["sha256"], manifest["models"]
    manifest_path(saved).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"lacks the fields \['sha256', 'models'\]"):
        load_artifact(saved)


def test_library_version_mismatch_is_listed(saved):
    _edit_manifest(saved, versions={"scikit-learn": "0.1.0", "numpy": "0.9.3"})
    with pytest.raises(ValueError) as caught:
        load_artifact(saved)
    message = str(caught.value)
    assert f"scikit-learn 0.1.0 in the artifact vs {sklearn.__version__} installed" in message
    assert f"numpy 0.9.3 in the artifact vs {np.__version__} installed" in message
    assert "lightgbm" not in message  # unchanged versions are not listed
    assert "strict_versions=False" in message


def test_library_version_mismatch_warns_when_not_strict(saved, router, data):
    features, _ = data
    _edit_manifest(saved, versions={"scikit-learn": "0.1.0"})
    with pytest.warns(UserWarning, match="scikit-learn 0.1.0 in the artifact"):
        loaded, manifest = load_artifact(saved, strict_versions=False)
    np.testing.assert_array_equal(loaded.classifier.predict(features), router.classifier.predict(features))
    assert manifest["versions"]["scikit-learn"] == "0.1.0"


def test_missing_library_is_a_mismatch(saved, monkeypatch):
    real = artifact._installed_version
    monkeypatch.setattr(artifact, "_installed_version", lambda d, m: None if d == "lightgbm" else real(d, m))
    with pytest.raises(ValueError, match="lightgbm .* in the artifact vs not installed"):
        load_artifact(saved)


def test_patch_versions_and_unchecked_libraries_may_differ(saved):
    major, minor = sklearn.__version__.split(".")[:2]
    _edit_manifest(saved, versions={"scikit-learn": f"{major}.{minor}.999", "scipy": "0.1.0", "numba": "0.1.0"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", UnsignedArtifactWarning)  # no key here; signing is test_artifact_signing's
        loaded, _ = load_artifact(saved)
    assert loaded.models_ == MODELS


def test_garbage_payload_is_a_clear_unpickle_error(saved):
    _replace_payload(saved, b"garbage" * 50)
    with pytest.raises(ValueError, match=f"could not unpickle artifact {re.escape(str(saved))}: ") as caught:
        load_artifact(saved)
    assert caught.value.__cause__ is not None
    assert str(caught.value.__cause__) in str(caught.value)


def test_truncated_pickle_is_a_clear_unpickle_error(saved):
    _replace_payload(saved, saved.read_bytes()[:40])
    with pytest.raises(ValueError, match="could not unpickle artifact"):
        load_artifact(saved)


def test_models_mismatch_between_object_and_manifest(saved):
    _edit_manifest(saved, models=["large", "medium", "small"])
    with pytest.raises(ValueError, match=r"models_ \['small', 'medium', 'large'\] but its manifest lists"):
        load_artifact(saved)


def test_manifest_of_another_artifact_is_refused(tmp_path, router):
    first = tmp_path / "router.joblib"
    save_artifact(router, first, models=MODELS, budgets=BUDGETS)
    other = tmp_path / "router.pkl"
    other.write_bytes(first.read_bytes())
    with pytest.raises(ValueError, match="describes artifact 'router.joblib', not 'router.pkl'"):
        load_artifact(other)


# --------------------------------------------------------------------------- #
# saving: validation, overwrite, atomicity
# --------------------------------------------------------------------------- #


def test_overwrite_replaces_both_files(saved, router):
    router.notes = {"k": 2}
    save_artifact(router, saved, models=MODELS, budgets=[0.5])
    loaded, manifest = load_artifact(saved)
    assert loaded.notes == {"k": 2}
    assert manifest["budgets"] == [0.5]
    assert _listing(saved.parent) == ["router.joblib", "router.manifest.json"]


def test_save_refuses_to_take_another_artifacts_manifest(saved, router):
    with pytest.raises(ValueError, match="already belongs to artifact"):
        save_artifact(router, saved.with_suffix(".pkl"), models=MODELS, budgets=BUDGETS)
    assert load_artifact(saved)[1]["artifact_file"] == "router.joblib"


def test_failed_pickling_leaves_the_old_artifact_and_no_temp_files(saved):
    before = (saved.read_bytes(), manifest_path(saved).read_bytes())
    with pytest.raises(TypeError, match=f"could not pickle the object for artifact {re.escape(str(saved))}"):
        save_artifact(lambda x: x, saved, models=["m"], budgets=[1.0])
    assert (saved.read_bytes(), manifest_path(saved).read_bytes()) == before
    assert _listing(saved.parent) == ["router.joblib", "router.manifest.json"]
    assert load_artifact(saved)[0].models_ == MODELS


def test_crash_between_the_two_moves_is_detected(saved, router, monkeypatch):
    moves = []
    real_replace = os.replace

    def replace_then_crash(source, destination):
        moves.append(Path(destination).name)
        if len(moves) == 2:
            raise OSError("simulated crash before the manifest is moved")
        real_replace(source, destination)

    monkeypatch.setattr(artifact.os, "replace", replace_then_crash)
    router.notes = {"k": 3}
    with pytest.raises(OSError, match="simulated crash"):
        save_artifact(router, saved, models=MODELS, budgets=BUDGETS)
    monkeypatch.undo()
    assert moves == ["router.joblib", "router.manifest.json"]
    assert _listing(saved.parent) == ["router.joblib", "router.manifest.json"]
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_artifact(saved)


def test_bad_metadata_writes_nothing(tmp_path, router):
    path = tmp_path / "router.joblib"
    with pytest.raises(ValueError, match="manifest field 'metrics' cannot be written as JSON"):
        save_artifact(router, path, models=MODELS, budgets=BUDGETS, metrics={"auc": float("nan")})
    with pytest.raises(ValueError, match="manifest field 'extra'"):
        save_artifact(router, path, models=MODELS, budgets=BUDGETS, extra={"when": object()})
    assert _listing(tmp_path) == []


def test_save_refuses_models_that_differ_from_the_object(tmp_path, router):
    with pytest.raises(ValueError, match="differ from the object's models_"):
        save_artifact(router, tmp_path / "router.joblib", models=list(reversed(MODELS)), budgets=BUDGETS)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": "gpt-4", "budgets": [1.0]}, "wrap a single name in a list"),
        ({"models": [], "budgets": [1.0]}, "must not be empty"),
        ({"models": ["a", "a", "b"], "budgets": [1.0]}, r"\['a'\] appear more than once"),
        ({"models": ["a", 3], "budgets": [1.0]}, "models must be str"),
        ({"models": ["a"], "budgets": 1.0}, "wrap a single budget in a list"),
        ({"models": ["a"], "budgets": [1.0, float("inf")]}, "position 1"),
        ({"models": ["a"], "budgets": [True]}, "budgets must be numbers"),
        ({"models": ["a"], "budgets": [1.0], "data_fingerprint": 123}, "data_fingerprint must be a str"),
    ],
)
def test_save_validates_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        save_artifact({"x": 1}, tmp_path / "a.joblib", **kwargs)
    assert _listing(tmp_path) == []


def test_save_refuses_manifest_suffix_and_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="reserved for manifests"):
        save_artifact({}, tmp_path / "a.manifest.json", models=["m"], budgets=[1.0])
    with pytest.raises(ValueError, match="does not exist"):
        save_artifact({}, tmp_path / "missing" / "a.joblib", models=["m"], budgets=[1.0])
    assert _listing(tmp_path) == []


def test_numpy_model_names_and_budgets_are_accepted(tmp_path):
    path = tmp_path / "a.joblib"
    save_artifact({}, path, models=np.array(["x", "y"]), budgets=np.array([0.1, 0.2]))
    manifest = read_manifest(path)
    assert manifest["models"] == ["x", "y"]
    assert manifest["budgets"] == [0.1, 0.2]


def test_classes_pickled_under_their_modules_before_issue_31_still_load():
    """Version-3 artifacts written before the router and the frozen predictors moved name the old modules."""
    import pickle

    from estimators.frozen import Affine, Called, FrozenRegressors
    from training.router import Router

    assert pickle.loads(b"ctraining.serving.router\nRouter\n.") is Router
    for cls in (Affine, Called, FrozenRegressors):
        assert pickle.loads(f"cestimators.evaluators\n{cls.__name__}\n.".encode()) is cls
