"""Embedders: text to unit-length float32 vectors, behind one small protocol.

The default, ``wordllama``, is local and offline: 256 dimensions, weights shipped in the
wheel, loaded with downloads disabled (its default loader would fetch a tokenizer file it
already ships). ``litellm/<model>`` uses a provider's embedding model through
:mod:`goatclaw.llm`. This is the only module that imports ``wordllama``, and only when an
embedder is first asked for.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from goatclaw.errors import GoatclawError, TaskError
from goatclaw.extras import missing_message

__all__ = ["DEFAULT_EMBEDDER", "Embedder", "LiteLLMEmbedder", "WordLlamaEmbedder", "embedder_for", "normalise"]

DEFAULT_EMBEDDER = "wordllama"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors. Implement ``name``, ``dim`` and ``embed``.

    ``name`` identifies the model (it is recorded in the store, so that vectors of two
    embedders are never mixed); ``dim`` is the vector length; ``embed`` returns a
    ``(len(texts), dim)`` float32 array whose rows have unit length.
    """

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 row per text."""
        ...


def normalise(vectors: Any) -> np.ndarray:
    """``vectors`` as a 2-D float32 array with unit-length rows (zero rows stay zero)."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.ascontiguousarray(arr / np.where(norms == 0, 1, norms), dtype=np.float32)


class WordLlamaEmbedder:
    """The offline default: WordLlama's ``l2_supercat`` token embeddings, 256 dimensions."""

    name = "wordllama"
    dim = 256
    _model: Any = None
    _lock = threading.Lock()

    def _load(self) -> Any:
        # Loading takes ~1 s; one model serves the whole process.
        with WordLlamaEmbedder._lock:
            if WordLlamaEmbedder._model is None:
                try:
                    wordllama = importlib.import_module("wordllama")
                except ImportError as exc:
                    message = missing_message(exc, extra="memory", module="wordllama",
                                              needed_by="the wordllama embedder")
                    raise TaskError(f"{message} (or set memory.embedder: litellm/<model> in goatclaw.yaml)",
                                    error_class="invalid_input") from None
                WordLlamaEmbedder._model = wordllama.WordLlama.load(
                    cache_dir=Path(wordllama.__file__).parent, disable_download=True, dim=self.dim)
        return WordLlamaEmbedder._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length 256-dimensional vectors, one per text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalise(self._load().embed(list(texts), norm=True, batch_size=256))


class LiteLLMEmbedder:
    """A provider's embedding model through :mod:`goatclaw.llm` (``litellm/<model>``).

    The dimension is learnt from the first answer (a probe embedding when asked first).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.name = f"litellm/{model}"
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """The model's vector length (one probe call if nothing was embedded yet)."""
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length vectors from the provider."""
        try:
            llm = importlib.import_module("goatclaw.llm")
        except ImportError:
            raise GoatclawError(f"memory.embedder '{self.name}' needs goatclaw.llm (the llm task), "
                                "which this goatclaw does not have yet; use 'wordllama'") from None
        embed = getattr(llm, "embed", None)
        if embed is None:
            raise GoatclawError(f"memory.embedder '{self.name}': goatclaw.llm has no embed() yet; use 'wordllama'")
        out = normalise(embed(self.model, list(texts)))
        self._dim = int(out.shape[1])
        return out


def embedder_for(name: str | None) -> Embedder:
    """The embedder called ``name`` (``wordllama`` or ``litellm/<model>``); a clear error otherwise."""
    name = name or DEFAULT_EMBEDDER
    if name == "wordllama":
        return WordLlamaEmbedder()
    if name.startswith("litellm/") and len(name) > len("litellm/"):
        return LiteLLMEmbedder(name.removeprefix("litellm/"))
    raise GoatclawError(f"unknown memory embedder '{name}': use 'wordllama' or 'litellm/<model>'")
