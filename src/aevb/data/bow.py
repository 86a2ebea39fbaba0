"""Bags of words: documents × vocabulary count matrices in Blei's LDA-C format (``ldac:PATH``), and the Reuters
sample that the PyPI package ``lda`` ships in it (the registered dataset ``reuters``).

An LDA-C file has one document a line, ``M id:count id:count ...``, M its number of distinct words and each id
a zero-based line number of the vocabulary file beside it (PATH with the suffix .tokens or .vocab, else
vocab.txt in its folder; one word a line). That is the svmlight layout with M in the label's place, so
scikit-learn's svmlight reader parses it (ids in increasing order, as it requires) and M checks each line.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import DataError
from .datasets import DATASETS, Arrays, DatasetSpec
from .formats import one_line

VOCABULARY_SUFFIXES = (".tokens", ".vocab")


def vocabulary_file(path: Path) -> Path:
    """The vocabulary of the LDA-C file ``path``: PATH.tokens, PATH.vocab (suffix replaced) or vocab.txt beside it."""
    candidates = [path.with_suffix(suffix) for suffix in VOCABULARY_SUFFIXES] + [path.parent / "vocab.txt"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise DataError(f"{path} has no vocabulary beside it (looked for {', '.join(c.name for c in candidates)}); "
                        "write one word a line, line i for word id i")
    return found


def read_vocabulary(path: Path) -> list[str]:
    try:
        words = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the vocabulary {path} ({one_line(e)}); it must be UTF-8 text, one word a line") from None
    words = words[:-1] if words and words[-1] == "" else words
    if not words:
        raise DataError(f"the vocabulary {path} is empty; write one word a line")
    return words


def read_ldac(path: Path) -> tuple[np.ndarray, list[str]]:
    """The count matrix (documents, vocabulary) of an LDA-C file as float32 and its vocabulary."""
    from sklearn.datasets import load_svmlight_file

    if not path.is_file():
        raise DataError(f"LDA-C file {path} {'is not a file' if path.exists() else 'does not exist'}; "
                        "check the path after 'ldac:'")
    words = read_vocabulary(vocabulary_file(path))
    try:
        counts, distinct = load_svmlight_file(str(path), n_features=len(words), zero_based=True)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not an LDA-C file of word ids below {len(words)}, the size of its vocabulary "
                        f"({one_line(e)}); each line must be 'M id:count ...' with increasing ids") from None
    if counts.shape[0] == 0:
        raise DataError(f"{path} holds no document; write one document a line")
    wrong = np.flatnonzero(counts.getnnz(axis=1) != distinct)
    if len(wrong):
        raise DataError(f"line {wrong[0] + 1} of {path} says {distinct[wrong[0]]:.0f} distinct words but lists "
                        f"{counts.getnnz(axis=1)[wrong[0]]}; the first number of a line counts its id:count pairs")
    return counts.toarray().astype(np.float32), words


def read_ldac_data(path: Path) -> Arrays:
    """(x, None, None, None): the documents of an LDA-C file, without labels or a test split (held out by the caller)."""
    return read_ldac(path)[0], None, None, None


class Reuters(DatasetSpec):
    """395 Reuters news stories of 1996-97 (from RCV1, Lewis et al. 2004) as counts of a 4,258-word vocabulary,
    84,010 words in all: the LDA-C file that the package ``lda`` ships (reuters.ldac and reuters.tokens), or the
    same two files in DATA_DIR/reuters. It has no test split: --test-fraction (default 0.1) is held out."""

    name = "reuters"
    has_test_split = False
    how_to_get = "install the lda package, which ships it: 'pip install lda' (or put reuters.ldac and reuters.tokens " \
                 "in DATA_DIR/reuters)"

    def local_sources(self, root):
        sources = [(f"data directory {root / self.name}", root / self.name / "reuters.ldac")]
        spec = importlib.util.find_spec("lda")
        if spec is not None and spec.submodule_search_locations:
            sources.append(("the lda package", Path(list(spec.submodule_search_locations)[0]) / "tests" / "reuters.ldac"))
        return sources

    def read(self, source):
        return read_ldac_data(source)

    def vocabulary(self, root: Path) -> list[str] | None:
        found = self.locate(root)
        return None if found is None else read_vocabulary(vocabulary_file(found[1]))


DATASETS.register("reuters")(Reuters())
