"""Prompt featurizers: turn query text, task and subtask into a dense matrix.

Every quality and cost estimator starts from the same prompt features, so they
live here as scikit-learn transformers that :class:`~sklearn.compose.ColumnTransformer`
can combine. The default needs no download: TF-IDF over word and character
n-grams compressed with truncated SVD, plus a handful of cheap structural
counts, plus the task and subtask as one-hot categories.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.preprocessing import OneHotEncoder
from sklearn.utils.validation import check_is_fitted, validate_data

from ._textkernels import (
    ascii_ngram_counts,
    ascii_text_features,
    ascii_text_features_parallel,
    encode_texts,
    project_counts,
    structure_counts,
)

__all__ = ["TextFeaturizer", "StructuralFeaturizer", "FrozenFeaturizer", "make_prompt_featurizer", "prompt_frame",
           "as_texts", "structure_counts_of", "CHAR_NGRAMS"]

#: Character n-gram lengths of :class:`TextFeaturizer` (word n-grams are 1 and 2).
CHAR_NGRAMS = (3, 4)
_CHAR_RANGE = np.array(CHAR_NGRAMS)  # the compiled passes' copy, made once


def _as_texts(X: np.ndarray) -> list[str]:
    """Join the cells of each row of a 2-D array into one string.

    Why: scikit-learn passes a one-column frame from ``ColumnTransformer`` and
    numeric arrays from its common checks; treating every row as "its cells
    joined by spaces" serves both with one rule. Missing cells (None, NaN)
    read as empty text. Through :func:`as_texts`, not ``astype(str)``: that would build a
    fixed-width array as wide as the longest prompt for every row.
    """
    cells: np.ndarray = as_texts(X).reshape(X.shape)
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
    """TF-IDF over hashed word and character n-grams, compressed with truncated SVD.

    Only the last ``word_chars`` (words) and ``char_chars`` (characters) of each
    text are read: few-shot prompts put the actual question at the end, and
    the windows bound the cost (scikit-learn's analyzers, which define the
    n-grams and still count non-ASCII texts, are pure Python: about 0.9 s
    for word bigrams over 10,000 tails of 1,000 characters; ASCII texts are
    counted by a compiled twin that gives the same matrix about 4 times
    faster, see :meth:`_hashed`). Character n-grams did not lower
    the Brier score on the shared data; they are kept short for robustness
    to spelling and to unseen words.

    Parameters
    ----------
    n_components : int, default=64
        Output dimension. With fewer than ``n_components + 1`` training texts
        the SVD keeps ``n - 1`` components and the remaining columns are 0.
    word_chars, char_chars : int, default=600 and 100
        Length of the text tail used for word (1-2)-grams and character
        (3-4)-grams (within word boundaries).
    n_features : int, default=2**14
        Hash space of each analyzer. Hashing (in Cython) instead of a Python
        vocabulary look-up saves a third of the featurization time; the
        collisions it causes are averaged away by the SVD.
    random_state : int, default=0
        Seed of the randomized SVD, so that refits are reproducible.

    Attributes
    ----------
    tfidf_ : TfidfTransformer
        Inverse document frequencies of the hashed n-grams.
    svd_ : TruncatedSVD or None
        The fitted projection; ``None`` when fitted on a single text (every
        output column is then 0).
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
        word_chars: int = 600,
        char_chars: int = 100,
        n_features: int = 2**14,
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.word_chars = word_chars
        self.char_chars = char_chars
        self.n_features = n_features
        self.random_state = random_state

    def _hashed(self, texts: list[str]) -> sparse.csr_matrix:
        """Raw n-gram counts of the two tails, side by side.

        ASCII texts are counted by :func:`~estimators._textkernels.ascii_ngram_counts`
        (the same matrix, about 20 times faster), the others by the two
        ``HashingVectorizer`` of :meth:`_hashed_by_sklearn`.
        """
        text, offsets, ascii = encode_texts(texts)
        plain, others = np.flatnonzero(ascii), np.flatnonzero(~ascii)
        indptr, indices, data = ascii_ngram_counts(text, offsets, plain, self.word_chars, self.char_chars,
                                                   self.n_features, np.array(CHAR_NGRAMS))
        counted = sparse.csr_matrix((data, indices, indptr), shape=(plain.size, 2 * self.n_features))
        if not others.size:
            return counted
        rest = self._hashed_by_sklearn([texts[r] for r in others])
        position = np.empty(len(texts), np.int64)
        position[np.concatenate([plain, others])] = np.arange(len(texts))
        return sparse.vstack([counted, rest], format="csr")[position]

    def _hashed_by_sklearn(self, texts: list[str]) -> sparse.csr_matrix:
        """:meth:`_hashed` with scikit-learn's analyzers: the definition, and the path for Unicode text."""
        def hasher(**kwargs) -> HashingVectorizer:
            return HashingVectorizer(n_features=self.n_features, alternate_sign=False, norm=None, **kwargs)

        words = hasher(ngram_range=(1, 2)).transform([t[-self.word_chars:] for t in texts])
        chars = hasher(analyzer="char_wb", ngram_range=CHAR_NGRAMS).transform([t[-self.char_chars:] for t in texts])
        return sparse.hstack([words, chars], format="csr")

    def fit(self, X: ArrayLike, y: object = None) -> TextFeaturizer:
        """Learn the n-grams' inverse document frequencies and the SVD projection.

        Parameters
        ----------
        X : array-like of shape (N, n_columns)
            Text cells; each row's cells are joined into one text.
        y : None
            Ignored.

        Returns
        -------
        self : TextFeaturizer
        """
        texts = self._texts(X, reset=True)
        counts = self._hashed(texts)
        self.tfidf_ = TfidfTransformer(sublinear_tf=True).fit(counts)
        n_components = min(self.n_components, len(texts) - 1)
        self.svd_ = None
        if n_components >= 1:
            # copy=False: the counts become the TF-IDF matrix in place (the same numbers), not held twice
            self.svd_ = TruncatedSVD(n_components, random_state=self.random_state).fit(
                self.tfidf_.transform(counts, copy=False))
            # Column-major, so that its transpose, the (features, components) projection that the frozen
            # text pass reads row by row, is a C-contiguous view: one copy in memory and in the artifact.
            self.svd_.components_ = np.asfortranarray(self.svd_.components_)
        return self

    def transform(self, X: ArrayLike) -> NDArray[np.float64]:
        """Project each text's TF-IDF vector on the fitted SVD components.

        Parameters
        ----------
        X : array-like of shape (N, n_features_in_)
            Text cells; each row's cells are joined into one text.

        Returns
        -------
        ndarray of float64, shape (N, n_components)
            Columns beyond the fitted components are 0.
        """
        check_is_fitted(self, "tfidf_")
        texts = self._texts(X, reset=False)
        out = np.zeros((len(texts), self.n_components))
        if self.svd_ is not None:
            projected = self.svd_.transform(self.tfidf_.transform(self._hashed(texts), copy=False))
            out[:, : projected.shape[1]] = projected
        return out

    def get_feature_names_out(self, input_features: ArrayLike | None = None) -> NDArray[np.object_]:
        """Names of the output columns (``svd0`` …), so that the prompt featurizer can name all its columns.

        Parameters
        ----------
        input_features : array-like of str, optional
            Ignored: the names do not depend on the input columns.

        Returns
        -------
        ndarray of object, shape (n_components,)
        """
        check_is_fitted(self, "tfidf_")
        return np.asarray([f"svd{i}" for i in range(self.n_components)], dtype=object)


_BYTE_CLASSES = {  # one translate + one count per class and text (ASCII; other bytes count as none)
    "words": b" \t",
    "digits": b"0123456789",
    "math": b"=+-*/^$\\",
    "questions": b"?",
    "newlines": b"\n",
    "braces": b"{};",
}
_SUBSTRINGS = {  # counted with str.count, which runs in C; A and B suffice to spot option lists
    "code": ("```", "def ", "return", "[PYTHON]"),
    "options": ("\nA)", "\nB)", "\n(A)", "\nA."),
}
_class_of_byte = bytearray(256)
for _index, _members in enumerate(_BYTE_CLASSES.values(), start=1):
    for _byte in _members:
        _class_of_byte[_byte] = _index
_CLASS_OF_BYTE = bytes(_class_of_byte)
_CLASS_CODES = [bytes([index]) for index in range(1, len(_BYTE_CLASSES) + 1)]


_MARKERS = [(group, marker.encode("ascii")) for group, markers in enumerate(_SUBSTRINGS.values()) for marker in markers]
#: The byte classes and markers as arrays, for the compiled counter.
_COMPILED_TABLES = (
    np.frombuffer(_CLASS_OF_BYTE, dtype=np.uint8).copy(), len(_BYTE_CLASSES),
    np.frombuffer(b"".join(m for _, m in _MARKERS), dtype=np.uint8).copy(),
    np.concatenate([[0], np.cumsum([len(m) for _, m in _MARKERS])]).astype(np.int64),
    np.array([g for g, _ in _MARKERS], dtype=np.int64), len(_SUBSTRINGS),
)


def _counts(text: str) -> list[int]:
    """One text's counts in Python: the definition, and the path for Unicode text."""
    classes = text.encode("utf-8", "replace").translate(_CLASS_OF_BYTE)
    counts = [len(text)] + [classes.count(code) for code in _CLASS_CODES]
    return counts + [sum(text.count(marker) for marker in markers) for markers in _SUBSTRINGS.values()]


def structure_counts_of(texts: Sequence[str] | NDArray[np.object_],
                        encoded: tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.bool_]] | None = None
                        ) -> NDArray[np.float64]:
    """Raw counts of :class:`StructuralFeaturizer`, shared by the featurizer and its frozen twin.

    ASCII texts are counted in one compiled pass
    (:func:`~estimators._textkernels.structure_counts`), the others by
    :func:`_counts`.

    Parameters
    ----------
    texts : sequence of str, shape (N,)
    encoded : (bytes, offsets, ascii), optional
        :func:`~estimators._textkernels.encode_texts` of ``texts`` when the
        caller has it already.

    Returns
    -------
    ndarray of float64, shape (N, 1 + classes + marker groups)
        Length in characters, byte-class counts, marker-group counts.
    """
    text, offsets, ascii = encode_texts(texts) if encoded is None else encoded
    counts = np.empty((len(texts), 1 + len(_BYTE_CLASSES) + len(_SUBSTRINGS)))
    if ascii.all():  # every text ASCII (a served prompt, in practice): one compiled pass straight into counts
        structure_counts(text, offsets, np.arange(len(texts)), *_COMPILED_TABLES, counts)
        return counts
    rows = np.flatnonzero(ascii)
    if rows.size:
        block = np.empty((rows.size, counts.shape[1]))
        structure_counts(text, offsets, rows, *_COMPILED_TABLES, block)
        counts[rows] = block
    for r in np.flatnonzero(~ascii).tolist():
        counts[r] = _counts(texts[r])
    return counts


class StructuralFeaturizer(_TextTransformer):
    """Cheap counts that say what kind of query a text is.

    ``log1p`` of the length in characters, and of the counts of spaces
    (a proxy for words), digits, math symbols, question marks, line breaks,
    braces and semicolons, code markers (``def``, ``return``, fences) and
    option lines (``A)``, ``(B)``, ``C.`` at a line start). They separate
    coding, math and multiple-choice queries even when the TF-IDF vocabulary
    has never seen the words. Counting uses ``bytes.translate`` and
    ``str.count`` (both in C) because regular expressions over 10,000
    few-shot prompts took 2 s, the whole featurization budget; ASCII texts
    are counted in one compiled pass (:func:`structure_counts_of`).

    Attributes
    ----------
    n_features_in_ : int
        Number of input columns (joined into one text per row).
    feature_names_ : list of str
        Names of the output columns.
    """

    def fit(self, X: ArrayLike, y: object = None) -> StructuralFeaturizer:
        """Check the input and name the output columns: the counts themselves need no fitting.

        Parameters
        ----------
        X : array-like of shape (N, n_columns)
            Text cells; each row's cells are joined into one text.
        y : None
            Ignored.

        Returns
        -------
        self : StructuralFeaturizer
        """
        self._texts(X, reset=True)
        self.feature_names_ = [f"log_{name}" for name in ("chars", *_BYTE_CLASSES, *_SUBSTRINGS)]
        return self

    def transform(self, X: ArrayLike) -> NDArray[np.float64]:
        """``log1p`` of each text's structural counts.

        Parameters
        ----------
        X : array-like of shape (N, n_features_in_)
            Text cells; each row's cells are joined into one text.

        Returns
        -------
        ndarray of float64, shape (N, len(feature_names_))
        """
        check_is_fitted(self, "feature_names_")
        return np.log1p(structure_counts_of(self._texts(X, reset=False)))

    def get_feature_names_out(self, input_features: ArrayLike | None = None) -> NDArray[np.object_]:
        """Names of the output columns, for ``ColumnTransformer`` and pipelines.

        Parameters
        ----------
        input_features : array-like of str, optional
            Ignored: the names do not depend on the input columns.

        Returns
        -------
        ndarray of object
            :attr:`feature_names_`.
        """
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)


def as_texts(values: ArrayLike) -> NDArray[np.object_]:
    """One string per entry as an object array: ``None`` and NaN become ``''``, other values ``str(value)``.

    A list comprehension, not ``astype(str)``: that would build a
    fixed-width array as wide as the longest prompt.

    Parameters
    ----------
    values : array-like
        Any shape; flattened.

    Returns
    -------
    ndarray of object, shape (values.size,)
    """
    values = np.asarray(values, dtype=object).ravel()
    return np.array([v if isinstance(v, str) else "" if pd.isna(v) else str(v) for v in values], dtype=object)


def prompt_frame(prompts: ArrayLike | None = None, tasks: ArrayLike | None = None,
                 subtasks: ArrayLike | None = None, n: int | None = None) -> pd.DataFrame:
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
            columns[name] = as_texts(values)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"prompts, tasks and subtasks must have one entry per query; got lengths {sorted(lengths)}")
    return pd.DataFrame(columns, index=None if columns else pd.RangeIndex(n or 0))


def make_prompt_featurizer(
    columns: Iterable[str], *, text: BaseEstimator | None = None, min_frequency: int = 10
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
    parts: list[tuple[str, Any, list[str]]] = []
    if "prompt" in columns:
        parts.append(("text", text if text is not None else TextFeaturizer(), ["prompt"]))
        parts.append(("structure", StructuralFeaturizer(), ["prompt"]))
    categorical: list[str] = [name for name in ("task", "subtask") if name in columns]
    if categorical:
        encoder = OneHotEncoder(
            handle_unknown="infrequent_if_exist", min_frequency=min_frequency,
            sparse_output=False, dtype=np.float64,
        )
        parts.append(("category", encoder, categorical))
    if not parts:
        raise ValueError("the prompt featurizer needs at least one of the columns prompt, task, subtask; got none")
    return ColumnTransformer(parts, sparse_threshold=0.0)


# --------------------------------------------------------------------------- #
# the fitted featurizer, frozen for prediction
# --------------------------------------------------------------------------- #


class _EncodedColumns:
    """The per-query columns of one call, each text column's UTF-8 bytes built once on demand.

    The text and structure blocks both read the prompt's bytes; encoding
    and joining a batch of prompts costs about as much as counting them, so
    it is done once per call (one object per call: nothing shared between
    threads).
    """

    def __init__(self, values: dict[str, np.ndarray]) -> None:
        self.values = values
        self._encoded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def encoded(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(bytes, offsets, ascii)`` of column ``name`` (see :func:`~estimators._textkernels.encode_texts`)."""
        if name not in self._encoded:
            self._encoded[name] = encode_texts(self.values[name])
        return self._encoded[name]


_TALLIES = threading.local()


def _tally(size: int) -> NDArray[np.int32]:
    """This thread's n-gram counting table of ``size`` zeros, made once and reused (never shared between threads).

    The compiled text pass leaves it zero (it resets only the entries a text
    touched); zeroing a fresh 256 KB table per call cost more than counting
    a short prompt.
    """
    tables: dict[int, NDArray[np.int32]] = _TALLIES.__dict__.setdefault("tables", {})
    table = tables.get(size)
    if table is None:
        table = tables[size] = np.zeros(size, np.int32)
    return table


class _TextBlock:
    """:class:`TextFeaturizer` as one compiled pass per ASCII text: n-grams, TF-IDF and the SVD projection.

    Texts with other characters are counted by the featurizer's own
    scikit-learn analyzers and projected by the same compiled row product.
    """

    def __init__(self, featurizer: TextFeaturizer, column: str) -> None:
        self.featurizer, self.column = featurizer, column
        self.word_chars, self.char_chars = int(featurizer.word_chars), int(featurizer.char_chars)
        self.n_features = int(featurizer.n_features)
        self.n_components = int(featurizer.n_components)
        self.idf = np.ascontiguousarray(featurizer.tfidf_.idf_, dtype=np.float64)

    @property
    def projection(self) -> np.ndarray | None:
        """The SVD projection ``(features, components)``: a view of the fitted components, never a copy.

        Held by the featurizer only (a stored view would be pickled as a
        second 16 MB array); :meth:`TextFeaturizer.fit` keeps the
        components column-major so that the view is C-contiguous.
        """
        svd = self.featurizer.svd_
        return None if svd is None else np.ascontiguousarray(svd.components_.T, dtype=np.float64)

    @staticmethod
    def supports(featurizer: object) -> bool:
        if type(featurizer) is not TextFeaturizer:
            return False
        tfidf = featurizer.tfidf_
        return (featurizer.word_chars > 0 and featurizer.char_chars > 0 and tfidf.sublinear_tf
                and tfidf.norm == "l2" and tfidf.use_idf)

    def __call__(self, columns: _EncodedColumns, n: int, parallel: bool) -> np.ndarray:
        out = np.zeros((n, self.n_components))
        projection = self.projection
        if projection is None:
            return out
        width = projection.shape[1]
        text, offsets, plain = columns.encoded(self.column)
        kernel = ascii_text_features_parallel if parallel else ascii_text_features
        if width == self.n_components and plain.all():  # every text ASCII: one compiled pass straight into out
            kernel(text, offsets, np.arange(n), self.word_chars, self.char_chars, self.n_features, _CHAR_RANGE,
                   self.idf, projection, _tally(2 * self.n_features), out)
            return out
        rows = np.flatnonzero(plain)
        if rows.size:
            block = np.empty((rows.size, width))
            kernel(text, offsets, rows, self.word_chars, self.char_chars, self.n_features, _CHAR_RANGE, self.idf,
                   projection, _tally(2 * self.n_features), block)
            out[rows, :width] = block
        others = np.flatnonzero(~plain)
        if others.size:
            texts = columns[self.column]
            counts = self.featurizer._hashed_by_sklearn([texts[r] for r in others])
            counts.sum_duplicates()
            row = np.empty(width)
            for j, r in enumerate(others):
                cells = slice(counts.indptr[j], counts.indptr[j + 1])
                project_counts(counts.indices[cells].astype(np.int64), counts.data[cells].astype(np.float64),
                               self.idf, projection, row)
                out[r, :width] = row
        return out


class _StructureBlock:
    """:class:`StructuralFeaturizer` on the call's encoded texts, without per-call validation."""

    def __init__(self, featurizer: StructuralFeaturizer, column: str) -> None:
        self.column = column

    @staticmethod
    def supports(featurizer: object) -> bool:
        return type(featurizer) is StructuralFeaturizer

    def __call__(self, columns: _EncodedColumns, n: int, parallel: bool) -> np.ndarray:
        return np.log1p(structure_counts_of(columns[self.column], columns.encoded(self.column)))


class _OneHotBlock:
    """``OneHotEncoder`` as one dictionary look-up per column and query.

    The output of every known category is computed once by the encoder
    itself (so infrequent pooling is exactly the encoder's); an unseen value
    takes the output of a value that cannot be a category.
    """

    _UNSEEN = "\x00unseen category\x00"

    def __init__(self, encoder: OneHotEncoder, columns: list[str]) -> None:
        self.columns = columns
        # infrequent_categories_ exists only when pooling is enabled, with None for a column without rare values
        infrequent = getattr(encoder, "infrequent_categories_", None) or [None] * len(encoder.categories_)
        widths = [len(categories) - (0 if rare is None or not len(rare) else len(rare) - 1)
                  for categories, rare in zip(encoder.categories_, infrequent, strict=True)]
        starts = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        self.width = int(starts[-1])
        self.slices = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        self.tables: list[dict[str, np.ndarray]] = []
        self.unseen: list[np.ndarray] = []
        for i, categories in enumerate(encoder.categories_):
            values = [str(c) for c in categories] + [self._UNSEEN]
            probe = pd.DataFrame({c: [str(encoder.categories_[j][0])] * len(values) for j, c in enumerate(columns)})
            probe[columns[i]] = values
            rows = np.asarray(encoder.transform(probe), dtype=np.float64)[:, self.slices[i]]
            self.tables.append({v: rows[r] for r, v in enumerate(values[:-1])})
            self.unseen.append(rows[-1])

    @staticmethod
    def supports(encoder: Any) -> bool:
        return (type(encoder) is OneHotEncoder and encoder.drop is None
                and encoder.handle_unknown in ("ignore", "infrequent_if_exist")
                and all(np.asarray(c).dtype == object for c in encoder.categories_))

    def __call__(self, columns: _EncodedColumns, n: int, parallel: bool) -> np.ndarray:
        out = np.empty((n, self.width))
        for i, column in enumerate(self.columns):
            table, unseen = self.tables[i], self.unseen[i]
            if n:  # an empty batch has nothing to look up (and a list of no rows would not broadcast)
                out[:, self.slices[i]] = [table.get(v, unseen) for v in columns[column]]
        return out


class _CalledBlock:
    """A transformer that cannot be frozen (sentence embeddings): its own ``transform`` on its columns."""

    def __init__(self, transformer: Any, columns: list[str]) -> None:
        self.transformer, self.columns = transformer, columns

    def __call__(self, columns: _EncodedColumns, n: int, parallel: bool) -> np.ndarray:
        data = pd.DataFrame({c: columns[c] for c in self.columns})
        return np.asarray(self.transformer.transform(data), dtype=np.float64).reshape(n, -1)


class FrozenFeaturizer:
    """A fitted prompt featurizer (:func:`make_prompt_featurizer`) frozen for prediction.

    Why: ``ColumnTransformer.transform`` on one prompt spends milliseconds in
    pandas indexing and scikit-learn's per-call validation, and its TF-IDF
    and SVD steps copy a 16 MB matrix per call. Each fitted transformer
    becomes a block that computes the same columns from plain arrays: the
    TF-IDF/SVD text features and the structural counts in compiled passes
    over the prompts' bytes (encoded once per call and shared by both), the
    one-hot categories by dictionary look-up; a transformer it does not
    know (the embedding featurizer) is called through its own ``transform``.
    The fitted featurizer's own ``transform`` is what training uses and
    what the tests compare with.

    Parameters
    ----------
    featurizer : ColumnTransformer
        Fitted, with dense output.

    Attributes
    ----------
    columns : list of str
        The per-query inputs read (``prompt``, ``task``, ``subtask``).
    """

    def __init__(self, featurizer: ColumnTransformer) -> None:
        if type(featurizer) is not ColumnTransformer or featurizer.sparse_threshold != 0.0:
            raise TypeError("FrozenFeaturizer takes a fitted ColumnTransformer with dense output "
                            "(make_prompt_featurizer builds one)")
        self.blocks: list[_TextBlock | _StructureBlock | _OneHotBlock | _CalledBlock] = []
        self.columns: list[str] = []
        for name, transformer, columns in featurizer.transformers_:
            if transformer == "drop" or (name == "remainder" and not len(columns)):
                continue
            if transformer == "passthrough":
                raise TypeError("FrozenFeaturizer does not take passthrough columns")
            columns = list(columns)
            self.columns += [c for c in columns if c not in self.columns]
            if len(columns) == 1 and _TextBlock.supports(transformer):
                self.blocks.append(_TextBlock(transformer, columns[0]))
            elif len(columns) == 1 and _StructureBlock.supports(transformer):
                self.blocks.append(_StructureBlock(transformer, columns[0]))
            elif _OneHotBlock.supports(transformer):
                self.blocks.append(_OneHotBlock(transformer, columns))
            else:
                self.blocks.append(_CalledBlock(transformer, columns))

    def categories(self, column: str) -> list[str]:
        """The categories of a one-hot column seen in training, sorted (empty when it is not one-hot encoded).

        Parameters
        ----------
        column : str

        Returns
        -------
        list of str
        """
        table = self._one_hot_table(column)
        return [] if table is None else sorted(table)

    def _one_hot_table(self, column: str) -> dict[str, np.ndarray] | None:
        for block in self.blocks:
            if isinstance(block, _OneHotBlock) and column in block.columns:
                return block.tables[block.columns.index(column)]
        return None

    def unseen(self, column: str, values: NDArray[np.object_]) -> NDArray[np.bool_]:
        """Which ``values`` of a one-hot column (``task``, ``subtask``) are no category seen in training.

        Such a value is encoded like every other unseen one (a typo and a
        new benchmark alike), which callers are told about. ``''`` (none
        given) is never counted: it is no name that could be misspelt.

        Parameters
        ----------
        column : str
            A per-query input.
        values : ndarray of str, shape (N,)

        Returns
        -------
        ndarray of bool, shape (N,)
            All ``False`` when ``column`` is not one-hot encoded.
        """
        table = self._one_hot_table(column)
        if table is None:
            return np.zeros(len(values), dtype=bool)
        return np.fromiter((value != "" and value not in table for value in values), dtype=bool, count=len(values))

    def transform(self, values: dict[str, NDArray[np.object_]], n: int, *,
                  parallel: bool = False) -> NDArray[np.float64]:
        """Prompt features ``(n, F)``, equal to the fitted featurizer's ``transform`` of the same columns.

        Parameters
        ----------
        values : dict of str to ndarray of str
            Each column of :attr:`columns` as :func:`as_texts` makes it.
        n : int
            Number of queries.
        parallel : bool, default=False
            Spread the compiled text pass over threads (same numbers).

        Returns
        -------
        ndarray of float64, shape (n, F)
        """
        columns = _EncodedColumns(values)
        blocks = [block(columns, n, parallel) for block in self.blocks]
        return np.hstack(blocks) if len(blocks) > 1 else blocks[0]
