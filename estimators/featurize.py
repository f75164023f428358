"""Prompt featurizers: turn query text, task and subtask into a dense matrix.

Every quality and cost estimator starts from the same prompt features, so they
live here as scikit-learn transformers that :class:`~sklearn.compose.ColumnTransformer`
can combine. The default needs no download: TF-IDF over word and character
n-grams compressed with truncated SVD, plus a handful of cheap structural
counts, plus the task and subtask as one-hot categories.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import OneHotEncoder
from sklearn.utils.validation import check_is_fitted, validate_data
from scipy import sparse

__all__ = ["TextFeaturizer", "StructuralFeaturizer", "make_prompt_featurizer", "prompt_frame"]


def _as_texts(X: np.ndarray) -> list[str]:
    """Join the cells of each row of a 2-D array into one string.

    Why: scikit-learn passes a one-column frame from ``ColumnTransformer`` and
    numeric arrays from its common checks; treating every row as "its cells
    joined by spaces" serves both with one rule. Missing cells (None, NaN)
    read as empty text.
    """
    cells = np.where(pd.isna(X), "", X).astype(str)
    if cells.shape[1] == 1:
        return cells[:, 0].tolist()
    return [" ".join(row) for row in cells]


class _TextTransformer(TransformerMixin, BaseEstimator):
    """Shared input handling of the transformers that read text cells."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.allow_nan = True
        return tags

    def _texts(self, X, *, reset: bool) -> list[str]:
        X = validate_data(self, X, dtype=None, ensure_all_finite=False, reset=reset)
        return _as_texts(np.asarray(X, dtype=object))


class TextFeaturizer(_TextTransformer):
    """TF-IDF over word and character n-grams, compressed with truncated SVD.

    Only the last ``word_chars`` (words) and ``char_chars`` (characters) of each
    text are read: few-shot prompts put the actual question at the end, and
    character n-grams are the slowest part of featurization (about 1 s per
    10,000 texts of 300 characters on one core), so the window bounds the cost.

    Parameters
    ----------
    n_components : int, default=64
        Output dimension (capped at the vocabulary size minus one, and at
        the number of training texts minus one).
    word_chars, char_chars : int, default=1000 and 250
        Length of the text tail used for word (1-2)-grams and character
        (3-5)-grams (within word boundaries).
    max_features : int, default=30000
        Vocabulary cap of each TF-IDF.
    random_state : int, default=0
        Seed of the randomized SVD, so that refits are reproducible.

    Attributes
    ----------
    word_, char_ : TfidfVectorizer
        The fitted vectorizers.
    svd_ : TruncatedSVD or None
        The fitted projection; ``None`` when the vocabulary is too small to
        project, in which case the TF-IDF columns are returned as they are.
    n_features_in_ : int
        Number of input columns (joined into one text per row).

    Examples
    --------
    >>> import numpy as np
    >>> texts = np.array([["What is 2+2?"], ["Name a prime."], ["def f(x): return x"]], dtype=object)
    >>> TextFeaturizer(n_components=2).fit_transform(texts).shape
    (3, 2)
    """

    def __init__(
        self,
        n_components: int = 64,
        word_chars: int = 1000,
        char_chars: int = 250,
        max_features: int = 30000,
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.word_chars = word_chars
        self.char_chars = char_chars
        self.max_features = max_features
        self.random_state = random_state

    def fit(self, X, y=None) -> "TextFeaturizer":
        texts = self._texts(X, reset=True)
        self.word_ = TfidfVectorizer(
            ngram_range=(1, 2), sublinear_tf=True, max_features=self.max_features, dtype=np.float64
        )
        self.char_ = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True,
            max_features=self.max_features, dtype=np.float64,
        )
        self.word_fitted_ = self._fit_vectorizer(self.word_, [t[-self.word_chars:] for t in texts])
        self.char_fitted_ = self._fit_vectorizer(self.char_, [t[-self.char_chars:] for t in texts])
        tfidf = self._tfidf(texts)
        n_components = min(self.n_components, tfidf.shape[1] - 1, len(texts) - 1)
        self.svd_ = None
        if n_components >= 1:
            self.svd_ = TruncatedSVD(n_components, random_state=self.random_state).fit(tfidf)
        return self

    @staticmethod
    def _fit_vectorizer(vectorizer: TfidfVectorizer, texts: list[str]) -> bool:
        """Fit ``vectorizer``; return False when the texts hold no n-gram at all."""
        try:
            vectorizer.fit(texts)
        except ValueError:  # empty vocabulary: every text blank or too short
            return False
        return True

    def _tfidf(self, texts: list[str]) -> sparse.csr_matrix:
        blocks = [sparse.csr_matrix((len(texts), 1))]  # keeps hstack valid when both are empty
        if self.word_fitted_:
            blocks.append(self.word_.transform([t[-self.word_chars:] for t in texts]))
        if self.char_fitted_:
            blocks.append(self.char_.transform([t[-self.char_chars:] for t in texts]))
        return sparse.hstack(blocks, format="csr")

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "svd_")
        tfidf = self._tfidf(self._texts(X, reset=False))
        if self.svd_ is None:
            return tfidf.toarray()
        return self.svd_.transform(tfidf)


_STRUCTURE = (
    ("digits", re.compile(r"\d")),
    ("code", re.compile(r"```|\bdef |\breturn\b|\bclass |[{};]|\bimport |\[PYTHON\]")),
    ("math", re.compile(r"[=+\-*/^]|\\frac|\\sqrt|\$")),
    ("questions", re.compile(r"\?")),
    ("options", re.compile(r"(?m)^\s*\(?[A-E][).:]\s")),
    ("newlines", re.compile(r"\n")),
)


class StructuralFeaturizer(_TextTransformer):
    """Cheap counts that say what kind of query a text is.

    Log-length in characters and words, and the log-count of digits, code
    markers, math symbols, question marks, option letters (``A)``, ``(B)``,
    ``C.``) and line breaks. They separate coding, math and multiple-choice
    queries even when the TF-IDF vocabulary has never seen the words.

    Attributes
    ----------
    n_features_in_ : int
        Number of input columns (joined into one text per row).
    feature_names_ : list of str
        Names of the output columns.
    """

    def fit(self, X, y=None) -> "StructuralFeaturizer":
        self._texts(X, reset=True)
        self.feature_names_ = ["log_chars", "log_words"] + [f"log_{name}" for name, _ in _STRUCTURE]
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        texts = self._texts(X, reset=False)
        counts = np.array(
            [[len(t), len(t.split())] + [len(pattern.findall(t)) for _, pattern in _STRUCTURE] for t in texts],
            dtype=np.float64,
        ).reshape(len(texts), len(self.feature_names_))
        return np.log1p(counts)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)


def prompt_frame(prompts=None, tasks=None, subtasks=None, n: int | None = None) -> pd.DataFrame:
    """Collect the per-query inputs of the prompt featurizer into one frame.

    Parameters
    ----------
    prompts, tasks, subtasks : array-like of str, shape (N,), optional
        Query text, benchmark name and finer category; missing ones are left out.
    n : int, optional
        Number of queries, needed only when all three are ``None``.

    Returns
    -------
    DataFrame
        Columns ``prompt``, ``task``, ``subtask`` (those given), object dtype,
        ``None`` and NaN replaced by ``''``.
    """
    columns = {}
    for name, values in (("prompt", prompts), ("task", tasks), ("subtask", subtasks)):
        if values is not None:
            values = np.asarray(values, dtype=object).ravel()
            columns[name] = np.where(pd.isna(values), "", values).astype(str).astype(object)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"prompts, tasks and subtasks must have one entry per query; got lengths {sorted(lengths)}")
    return pd.DataFrame(columns, index=None if columns else pd.RangeIndex(n or 0))


def make_prompt_featurizer(
    columns, *, text: BaseEstimator | None = None, min_frequency: int = 10
) -> ColumnTransformer:
    """Build the default prompt featurizer for the columns that are present.

    Parameters
    ----------
    columns : iterable of str
        Columns of the :func:`prompt_frame` that will be passed: any of
        ``prompt``, ``task``, ``subtask``.
    text : transformer, optional
        Featurizer of the prompt text; default :class:`TextFeaturizer`. Pass an
        :class:`~estimators.embedding.EmbeddingFeaturizer` to use sentence
        embeddings instead.
    min_frequency : int, default=10
        Tasks and subtasks seen fewer times are pooled into one "infrequent"
        column (unknown ones at predict time go there too), so rare subtasks
        cannot be memorised.

    Returns
    -------
    ColumnTransformer
        Dense float64 output; raises ``ValueError`` when ``columns`` is empty.
    """
    columns = list(columns)
    parts = []
    if "prompt" in columns:
        parts.append(("text", text if text is not None else TextFeaturizer(), ["prompt"]))
        parts.append(("structure", StructuralFeaturizer(), ["prompt"]))
    categorical = [name for name in ("task", "subtask") if name in columns]
    if categorical:
        encoder = OneHotEncoder(
            handle_unknown="infrequent_if_exist", min_frequency=min_frequency,
            sparse_output=False, dtype=np.float64,
        )
        parts.append(("category", encoder, categorical))
    if not parts:
        raise ValueError("the prompt featurizer needs at least one of the columns prompt, task, subtask; got none")
    return ColumnTransformer(parts, sparse_threshold=0.0)
