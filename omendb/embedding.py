"""Embedding functions: what turns a table's text into its vectors.

A table created with ``embedding=fn, source_column="summary"`` embeds the text of that
column for rows added without vectors, and embeds string queries. ``fn`` is any
callable from a list of strings to one vector per string (a 2-D array-like), or one of
the adapters here, which also say their name, parameters and dimension. The table's
manifest records the function's name and parameters (:func:`embedding_record`), so a
reopened table says what it needs; an adapter's record is enough to make it again
(:func:`embedding_from_record`), a plain callable has to be given again.

No adapter downloads a model: each loads one that is already on this machine (a local
folder, a package carrying its model, or a model cache), and says so when it is not.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import numpy as np

from .errors import (ArgumentTypeError, DimensionError, EmbeddingError, InvalidArgumentError, MissingDependencyError,
                     OmenError)

__all__ = ["Embedding", "HashEmbedding", "SentenceTransformerEmbedding", "FastEmbedEmbedding", "embedding_record",
           "embedding_from_record", "embed_texts", "is_text_query", "EMBED_BATCH_ROWS"]

#: Texts handed to an embedding function per call.
EMBED_BATCH_ROWS = 4_096


class Embedding(ABC):
    """An embedding function omendb knows how to describe and to make again.

    Subclasses set ``name`` (recorded in the table's manifest), return their parameters
    from :meth:`params` (JSON values; ``type(self)(**params)`` makes the same function) and
    embed in :meth:`__call__`.
    """

    name: str = ""
    #: Parameters that change how it runs, not the vectors it makes (a table opened with
    #: other values of these is still embedded the same way).
    settings: tuple[str, ...] = ()

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The parameters that, given to the constructor, make this same function."""

    def identity(self) -> dict[str, Any]:
        """The parameters that decide its vectors (:meth:`params` but ``settings``)."""
        return {key: value for key, value in self.params().items() if key not in self.settings}

    @abstractmethod
    def __call__(self, texts: list[str]) -> np.ndarray:
        """One float32 vector per text: a ``(len(texts), dim)`` array."""

    @property
    def dim(self) -> int | None:
        """The number of components of its vectors, when known without embedding anything."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.params().items())
        return f"{type(self).__name__}({args})"


class HashEmbedding(Embedding):
    """Feature hashing of words: deterministic, instant, no model, no dependency.

    Each lowercased word (a run of letters, digits or ``_``) adds +-1 to one of ``dim``
    components, both chosen by a BLAKE2 hash of the word, and the sum is scaled to unit
    length. Texts sharing words point the same way, so it finds rows by the words they
    share, not by meaning. For tests, examples and pipelines that need vectors
    from text before a real model is chosen; a text with no words embeds as the empty word.
    """

    name = "hash"
    _WORD = re.compile(r"\w+")

    def __init__(self, dim: int = 64) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65_536:
            raise InvalidArgumentError(f"HashEmbedding dim must be an integer from 1 to 65,536, got {dim!r}")
        self._dim = dim

    def params(self) -> dict[str, Any]:
        return {"dim": self._dim}

    @property
    def dim(self) -> int:
        return self._dim

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), np.float32)
        for row, text in enumerate(texts):
            for word in self._WORD.findall(text.lower()) or [""]:
                digest = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, digest % self._dim] += 1.0 if (digest >> 63) else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


class SentenceTransformerEmbedding(Embedding):
    """A sentence-transformers model (``pip install sentence-transformers``), loaded from
    this machine only (``local_files_only``): ``model`` is a folder holding the model, or
    the name of one already in the Hugging Face cache.

    ``normalize=True`` scales vectors to unit length (the usual choice for the cosine
    metric); ``batch_size`` texts go through the model at once; ``device`` is torch's
    (``"cpu"``, ``"cuda"``). The model loads on first use.
    """

    name = "sentence-transformers"
    settings = ("batch_size", "device")

    def __init__(self, model: str, *, normalize: bool = True, batch_size: int = 64, device: str = "cpu") -> None:
        if not isinstance(model, str) or not model:
            raise InvalidArgumentError(f"model must be a model folder or name, got {model!r}")
        self._model_name, self._normalize, self._batch_size, self._device = model, normalize, batch_size, device
        self._model: Any = None

    def params(self) -> dict[str, Any]:
        return {"model": self._model_name, "normalize": self._normalize, "batch_size": self._batch_size,
                "device": self._device}

    @property
    def dim(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def _load(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise MissingDependencyError("SentenceTransformerEmbedding needs sentence-transformers: "
                                             "pip install 'omendb[embeddings]'") from None
            try:
                self._model = SentenceTransformer(self._model_name, device=self._device, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise EmbeddingError(f"sentence-transformers model {self._model_name!r} is not on this machine "
                                     f"(omendb never downloads a model; give a folder holding it): {exc}") from None
        return self._model

    def __call__(self, texts: list[str]) -> np.ndarray:
        vectors = self._load().encode(texts, batch_size=self._batch_size, normalize_embeddings=self._normalize,
                                      convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


class FastEmbedEmbedding(Embedding):
    """A fastembed ONNX model (``pip install fastembed``), loaded from this machine only
    (``local_files_only``): ``model`` is a fastembed model name whose files are already in
    ``cache_dir`` (fastembed's default cache when None). Faster to load than
    sentence-transformers and needs no torch; its models are fastembed's list only.
    """

    name = "fastembed"
    settings = ("cache_dir", "batch_size")

    def __init__(self, model: str = "BAAI/bge-small-en-v1.5", *, cache_dir: str | None = None,
                 batch_size: int = 256) -> None:
        if not isinstance(model, str) or not model:
            raise InvalidArgumentError(f"model must be a fastembed model name, got {model!r}")
        self._model_name, self._cache_dir, self._batch_size = model, cache_dir, batch_size
        self._model: Any = None

    def params(self) -> dict[str, Any]:
        return {"model": self._model_name, "cache_dir": self._cache_dir, "batch_size": self._batch_size}

    def _load(self) -> Any:
        if self._model is None:
            try:
                from fastembed import TextEmbedding
            except ImportError:
                raise MissingDependencyError("FastEmbedEmbedding needs fastembed: pip install fastembed") from None
            try:
                self._model = TextEmbedding(self._model_name, cache_dir=self._cache_dir, local_files_only=True)
            except Exception as exc:  # fastembed raises ValueError, OSError or its hub's errors
                raise EmbeddingError(f"fastembed model {self._model_name!r} is not on this machine (omendb never "
                                     f"downloads a model; put its files in cache_dir): {exc}") from None
        return self._model

    def __call__(self, texts: list[str]) -> np.ndarray:
        vectors = list(self._load().embed(texts, batch_size=self._batch_size))
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


_ADAPTERS: dict[str, type[Embedding]] = {cls.name: cls for cls in
                                         (HashEmbedding, SentenceTransformerEmbedding, FastEmbedEmbedding)}


def is_text_query(q: Any) -> bool:
    """True for a query given as text: a string, or a non-empty list or tuple of strings."""
    return isinstance(q, str) or (isinstance(q, (list, tuple)) and len(q) > 0 and all(isinstance(x, str) for x in q))


def embedding_record(fn: Any) -> dict[str, Any]:
    """What a table's manifest records of ``fn``: its ``name`` and ``params`` (an
    :class:`Embedding`'s own; for another callable its import path and no params)."""
    if isinstance(fn, Embedding):
        return {"name": fn.name, "params": fn.params()}
    if isinstance(fn, type):
        raise ArgumentTypeError(f"embedding must be a function or an adapter instance (e.g. {fn.__name__}(...)), "
                                f"not the class {fn.__name__}")
    if not callable(fn):
        raise ArgumentTypeError(f"embedding must be a callable from a list of strings to vectors, "
                                f"got {type(fn).__name__}")
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return {"name": f"{getattr(target, '__module__', '?')}.{target.__qualname__}", "params": {}}


def embedding_from_record(record: dict[str, Any]) -> Embedding | None:
    """The adapter a record names, made again from its params (None: not an adapter's record)."""
    cls = _ADAPTERS.get(record.get("name", ""))
    return None if cls is None else cls(**record.get("params", {}))


def embed_texts(fn: Callable[[list[str]], Any], texts: Sequence[str], dim: int | None, what: str) -> np.ndarray:
    """``texts`` embedded by ``fn``, :data:`EMBED_BATCH_ROWS` at a time, as a checked
    ``(len(texts), dim)`` float32 matrix (``dim`` None: whatever ``fn`` gives). ``what``
    names the function and table in errors."""
    pieces = []
    for start in range(0, len(texts), EMBED_BATCH_ROWS):
        batch = list(texts[start:start + EMBED_BATCH_ROWS])
        try:
            vectors = fn(batch)
        except OmenError:  # (an adapter's own: its model is missing, say)
            raise
        except Exception as exc:
            raise EmbeddingError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
        try:  # (a copy: a function may hand back the same buffer every call)
            vectors = np.array(vectors, dtype=np.float32, copy=True)
        except (TypeError, ValueError) as exc:
            raise EmbeddingError(f"{what} returned something that is not numeric vectors: {exc}") from None
        if vectors.ndim != 2 or vectors.shape[0] != len(batch) or vectors.shape[1] == 0:
            raise EmbeddingError(f"{what} returned an array of shape {vectors.shape} for {len(batch)} texts; "
                                 "it must return one vector (of at least one component) per text")
        if dim is not None and vectors.shape[1] != dim:
            raise DimensionError(f"{what} returned vectors of {vectors.shape[1]} components; the table has dim {dim}")
        if not np.isfinite(vectors).all():
            raise EmbeddingError(f"{what} returned NaN or infinity")
        pieces.append(vectors)
        dim = vectors.shape[1]
    return np.concatenate(pieces) if pieces else np.zeros((0, dim or 0), np.float32)
