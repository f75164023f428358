"""Compiled text kernels of :class:`estimators.featurize.TextFeaturizer` and its serving twin.

The featurizer's n-gram analyzers are pure Python: about 120 µs per prompt
in scikit-learn's analyzers and the hasher's per-token Python objects,
which was most of the time to fit or apply the estimators, the whole
per-query budget of batch scoring and a tenth of the single-request latency
budget. For ASCII text, this module produces the same n-grams and the same
MurmurHash3 indices in one compiled pass over each text's bytes:

* :func:`ascii_ngram_counts`: the featurizer's raw counts (a CSR matrix's
  arrays, identical to ``HashingVectorizer``'s), so everything after them
  (TF-IDF, SVD) is bit for bit the same;
* :func:`ascii_text_features`: counts, sublinear TF-IDF, L2 normalisation
  and the SVD projection fused, for serving (the projection sums the same
  terms in another order: features agree to about 1e-15 relative);
* :func:`structure_counts`: the structural featurizer's counts.

Texts with any non-ASCII character (Unicode lower-casing, ``\\w`` and
whitespace rules differ) stay with scikit-learn's analyzers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

from kernel.config import JIT_OPTIONS, UNCACHED_JIT_OPTIONS

__all__ = ["encode_texts", "murmurhash3_32", "ascii_ngram_counts", "ascii_text_features",
           "ascii_text_features_parallel", "project_counts", "structure_counts"]

_MASK = np.uint64(0xFFFFFFFF)
_C1 = np.uint64(0xCC9E2D51)
_C2 = np.uint64(0x1B873593)
_M5 = np.uint64(5)
_N1 = np.uint64(0xE6546B64)
_F1 = np.uint64(0x85EBCA6B)
_F2 = np.uint64(0xC2B2AE35)


def encode_texts(texts: Sequence[str] | NDArray[np.object_]
                 ) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.bool_]]:
    """Pack texts into one byte buffer with offsets, the only form the compiled kernels read.

    Parameters
    ----------
    texts : sequence of str, shape (N,)
        Read twice (encoded, then tested for ASCII).

    Returns
    -------
    bytes : ndarray of uint8
        The UTF-8 bytes of every text, concatenated (one ``0`` byte when all
        are empty): text ``r`` is ``bytes[offsets[r]:offsets[r + 1]]``.
    offsets : ndarray of int64, shape (N + 1,)
    ascii : ndarray of bool, shape (N,)
        Whether text ``r`` is plain ASCII, the only texts the kernels here read.
    """
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    ascii = np.fromiter((t.isascii() for t in texts), dtype=bool, count=len(encoded))
    return np.frombuffer(b"".join(encoded) or b"\0", np.uint8), offsets, ascii


@njit(**JIT_OPTIONS)
def _rotl(x, r):
    return ((x << np.uint64(r)) | (x >> np.uint64(32 - r))) & _MASK


@njit(**JIT_OPTIONS)
def murmurhash3_32(buf, start, stop):
    """Signed MurmurHash3 (x86, 32 bit, seed 0) of ``buf[start:stop]``, as scikit-learn's."""
    length = stop - start
    h = np.uint64(0)
    n_blocks = length // 4
    for block in range(n_blocks):
        p = start + 4 * block
        k = (np.uint64(buf[p]) | (np.uint64(buf[p + 1]) << np.uint64(8))
             | (np.uint64(buf[p + 2]) << np.uint64(16)) | (np.uint64(buf[p + 3]) << np.uint64(24)))
        k = (k * _C1) & _MASK
        k = _rotl(k, 15)
        k = (k * _C2) & _MASK
        h ^= k
        h = _rotl(h, 13)
        h = (h * _M5 + _N1) & _MASK
    tail = start + 4 * n_blocks
    rest = length & 3
    k = np.uint64(0)
    if rest == 3:
        k ^= np.uint64(buf[tail + 2]) << np.uint64(16)
    if rest >= 2:
        k ^= np.uint64(buf[tail + 1]) << np.uint64(8)
    if rest >= 1:
        k ^= np.uint64(buf[tail])
        k = (k * _C1) & _MASK
        k = _rotl(k, 15)
        k = (k * _C2) & _MASK
        h ^= k
    h ^= np.uint64(length)
    h ^= h >> np.uint64(16)
    h = (h * _F1) & _MASK
    h ^= h >> np.uint64(13)
    h = (h * _F2) & _MASK
    h ^= h >> np.uint64(16)
    signed = np.int64(h)
    if signed >= 2147483648:
        signed -= 4294967296
    return signed


@njit(**JIT_OPTIONS)
def _index(h, n_features):
    """Column of a hash, as ``sklearn.feature_extraction._hashing_fast.transform``.

    A power-of-two width (the usual one) takes a mask instead of a 64-bit
    division, which was a third of the hashing time.
    """
    if h == -2147483648:
        return (2147483647 - (n_features - 1)) % n_features
    if n_features & (n_features - 1) == 0:
        return abs(h) & (n_features - 1)
    return abs(h) % n_features


@njit(**JIT_OPTIONS)
def _is_word(b):  # \w for lower-cased ASCII: a-z, 0-9, _
    return (97 <= b <= 122) or (48 <= b <= 57) or b == 95


@njit(**JIT_OPTIONS)
def _is_space(b):  # str.split() whitespace in ASCII: \t \n \v \f \r, \x1c-\x1f, space
    return (9 <= b <= 13) or (28 <= b <= 32)


@njit(**JIT_OPTIONS)
def _lower(src, start, stop, dst):
    for i in range(stop - start):
        b = src[start + i]
        dst[i] = b + 32 if 65 <= b <= 90 else b
    return stop - start


@njit(**JIT_OPTIONS)
def _word_grams(text, length, n_features, scratch, out, n_out):
    """Word 1- and 2-grams of tokens matching ``(?u)\\b\\w\\w+\\b``; appends column indices."""
    previous_start, previous_stop = -1, -1
    i = 0
    while i < length:
        if not _is_word(text[i]):
            i += 1
            continue
        start = i
        while i < length and _is_word(text[i]):
            i += 1
        if i - start < 2:
            continue
        out[n_out] = _index(murmurhash3_32(text, start, i), n_features)
        n_out += 1
        if previous_start >= 0:
            size = 0
            for j in range(previous_start, previous_stop):
                scratch[size] = text[j]
                size += 1
            scratch[size] = 32
            size += 1
            for j in range(start, i):
                scratch[size] = text[j]
                size += 1
            out[n_out] = _index(murmurhash3_32(scratch, 0, size), n_features)
            n_out += 1
        previous_start, previous_stop = start, i
    return n_out


@njit(**JIT_OPTIONS)
def _char_wb_grams(text, length, n_features, offset, min_n, max_n, scratch, out, n_out):
    """``char_wb`` n-grams: each whitespace-separated word padded with spaces, as scikit-learn."""
    i = 0
    while i < length:
        if _is_space(text[i]):
            i += 1
            continue
        start = i
        while i < length and not _is_space(text[i]):
            i += 1
        scratch[0] = 32
        size = 1
        for j in range(start, i):
            scratch[size] = text[j]
            size += 1
        scratch[size] = 32
        size += 1
        for n in range(min_n, max_n + 1):
            position = 0
            out[n_out] = offset + _index(murmurhash3_32(scratch, 0, min(n, size)), n_features)
            n_out += 1
            while position + n < size:
                position += 1
                out[n_out] = offset + _index(murmurhash3_32(scratch, position, position + n), n_features)
                n_out += 1
            if position == 0:
                break
    return n_out


@njit(**JIT_OPTIONS)
def project_counts(columns, counts, idf, projection, out_row):
    """Sublinear TF-IDF of one text's counts, L2-normalised, times the SVD projection.

    ``columns`` must be unique. ``projection`` is ``components_.T``
    (C-contiguous, one row per hashed column), so each n-gram reads one row.
    """
    n_components = projection.shape[1]
    norm = 0.0
    for c in range(n_components):
        out_row[c] = 0.0
    for j in range(columns.size):
        weight = (np.log(counts[j]) + 1.0) * idf[columns[j]]
        norm += weight * weight
        row = projection[columns[j]]
        for c in range(n_components):
            out_row[c] += weight * row[c]
    if norm > 0.0:
        scale = 1.0 / np.sqrt(norm)
        for c in range(n_components):
            out_row[c] *= scale


def _text_features(text, offsets, rows, word_chars, char_chars, n_features, char_range, idf, projection, tally,
                   out):
    """Features of ASCII texts ``rows``; text ``r`` is ``text[offsets[r]:offsets[r + 1]]``.

    Words are read from its last ``word_chars`` characters, character
    n-grams from its last ``char_chars`` (as the featurizer's tails); row
    ``i`` of ``out`` gets text ``rows[i]``. ``tally`` (int32, ``2 n_features``
    zeros, left zero) counts the first block's n-grams: a caller that keeps
    one per thread saves zeroing 256 KB per call, which cost more than
    counting a short prompt and evicted the caches the rest of the call
    reads; other blocks (parallel tasks) count in a table of their own.
    """
    n_texts = rows.size
    longest = 1
    for i in range(n_texts):
        longest = max(longest, min(offsets[rows[i] + 1] - offsets[rows[i]], max(word_chars, char_chars)))
    n_blocks = (n_texts + _BLOCK - 1) // _BLOCK
    for block in prange(n_blocks):
        lowered = np.empty(longest, np.uint8)
        scratch = np.empty(2 * longest + 3, np.uint8)
        grams = np.empty(4 * longest + 8, np.int64)
        counter = tally if block == 0 else np.zeros(2 * n_features, np.int32)
        columns = np.empty(4 * longest + 8, np.int64)
        counts = np.empty(4 * longest + 8, np.float64)
        for i in range(block * _BLOCK, min(n_texts, (block + 1) * _BLOCK)):
            start, stop = offsets[rows[i]], offsets[rows[i] + 1]
            _one_text(text, max(start, stop - word_chars), max(start, stop - char_chars), stop, n_features,
                      char_range, idf, projection, out[i], lowered, scratch, grams, counter, columns, counts)


@njit(**JIT_OPTIONS)
def _count_grams(text, word_start, char_start, stop, n_features, char_range, lowered, scratch, grams, tally,
                 columns, counts):
    """Hash one text's n-grams and count them; return how many distinct columns it has.

    Fills ``columns[:n]`` (in order of first occurrence) and ``counts[:n]``.
    n-grams are counted in ``tally`` (one slot per hashed column, all zero
    on entry and on exit) rather than by sorting them, which cost as much as
    hashing.
    """
    length = _lower(text, word_start, stop, lowered)
    n_grams = _word_grams(lowered, length, n_features, scratch, grams, 0)
    length = _lower(text, char_start, stop, lowered)
    n_grams = _char_wb_grams(lowered, length, n_features, n_features, char_range[0], char_range[1],
                             scratch, grams, n_grams)
    n_unique = 0
    for j in range(n_grams):
        column = grams[j]
        if tally[column] == 0:
            columns[n_unique] = column
            n_unique += 1
        tally[column] += 1
    for j in range(n_unique):
        counts[j] = tally[columns[j]]
        tally[columns[j]] = 0
    return n_unique


@njit(**JIT_OPTIONS)
def _one_text(text, word_start, char_start, stop, n_features, char_range, idf, projection, out_row,
              lowered, scratch, grams, tally, columns, counts):
    """Hash, count and project one text (one compiled pass over its bytes)."""
    n_unique = _count_grams(text, word_start, char_start, stop, n_features, char_range, lowered, scratch, grams,
                            tally, columns, counts)
    project_counts(columns[:n_unique], counts[:n_unique], idf, projection, out_row)


@njit(**JIT_OPTIONS)
def ascii_ngram_counts(text, offsets, rows, word_chars, char_chars, n_features, char_range):
    """Raw n-gram counts of ASCII texts ``rows`` as CSR arrays ``(indptr, indices, data)``.

    Row ``i`` is text ``rows[i]`` (``text[offsets[r]:offsets[r + 1]]``):
    word (1, 2)-grams of its last ``word_chars`` characters in columns
    ``[0, n_features)``, ``char_wb`` n-grams of its last ``char_chars`` in
    ``[n_features, 2 n_features)``, indices sorted within a row, as the
    featurizer's ``HashingVectorizer`` pair gives them.
    """
    n_texts = rows.size
    longest = 1
    for i in range(n_texts):
        longest = max(longest, min(offsets[rows[i] + 1] - offsets[rows[i]], max(word_chars, char_chars)))
    lowered = np.empty(longest, np.uint8)
    scratch = np.empty(2 * longest + 3, np.uint8)
    grams = np.empty(4 * longest + 8, np.int64)
    tally = np.zeros(2 * n_features, np.int32)
    columns = np.empty(4 * longest + 8, np.int64)
    counts = np.empty(4 * longest + 8, np.float64)
    indptr = np.zeros(n_texts + 1, np.int64)
    indices = np.empty(max(1024, 64 * n_texts), np.int64)
    data = np.empty(indices.size, np.float64)
    for i in range(n_texts):
        start, stop = offsets[rows[i]], offsets[rows[i] + 1]
        n_unique = _count_grams(text, max(start, stop - word_chars), max(start, stop - char_chars), stop,
                                n_features, char_range, lowered, scratch, grams, tally, columns, counts)
        end = indptr[i] + n_unique
        if end > indices.size:  # grow geometrically
            size = max(2 * indices.size, end)
            indices = np.concatenate((indices, np.empty(size - indices.size, np.int64)))
            data = np.concatenate((data, np.empty(size - data.size, np.float64)))
        order = np.argsort(columns[:n_unique])
        for j in range(n_unique):
            indices[indptr[i] + j] = columns[order[j]]
            data[indptr[i] + j] = counts[order[j]]
        indptr[i + 1] = end
    return indptr, indices[:indptr[n_texts]], data[:indptr[n_texts]]


_BLOCK = 64  # texts per block of scratch buffers (and per parallel task)
#: Serial variant (services). The parallel one is not cached on disk: see ``estimators._forest``.
ascii_text_features = njit(**JIT_OPTIONS)(_text_features)
ascii_text_features_parallel = njit(parallel=True, **UNCACHED_JIT_OPTIONS)(_text_features)


@njit(**JIT_OPTIONS)
def structure_counts(text, offsets, rows, class_of_byte, n_classes, markers, marker_offsets, marker_group,
                     n_groups, out):
    """``estimators.featurize._counts`` for ASCII texts ``rows``: length, byte-class counts, marker counts.

    Row ``i`` of ``out`` gets, for text ``rows[i]`` (``text[offsets[r]:offsets[r + 1]]``),
    ``[len, count of class 1..n_classes, markers of group 0..n_groups-1]``.
    Each marker is counted without overlaps, left to right, as ``str.count``
    does; one pass over the text tries only the markers whose first byte
    matches (each with its own "next allowed position").
    """
    n_markers = marker_offsets.size - 1
    starts_with = np.zeros(256, np.bool_)
    for m in range(n_markers):
        starts_with[markers[marker_offsets[m]]] = True
    allowed = np.empty(n_markers, np.int64)
    for r in range(rows.size):
        start, stop = offsets[rows[r]], offsets[rows[r] + 1]
        for c in range(out.shape[1]):
            out[r, c] = 0.0
        out[r, 0] = stop - start
        for m in range(n_markers):
            allowed[m] = start
        for i in range(start, stop):
            byte = text[i]
            kind = class_of_byte[byte]
            if kind > 0:
                out[r, kind] += 1.0
            if not starts_with[byte]:
                continue
            for m in range(n_markers):
                first, last = marker_offsets[m], marker_offsets[m + 1]
                width = last - first
                if markers[first] != byte or i < allowed[m] or i + width > stop:
                    continue
                matched = True
                for j in range(1, width):
                    if text[i + j] != markers[first + j]:
                        matched = False
                        break
                if matched:
                    out[r, 1 + n_classes + marker_group[m]] += 1.0
                    allowed[m] = i + width
