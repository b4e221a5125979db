"""Type stub for the private extension `pipeline._rust` (built from rust_loader/ by maturin)."""

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

__version__: str

class ShardFormatError(ValueError): ...
class TokenizerMismatchError(ShardFormatError): ...
class TokenizerFormatError(ValueError): ...

# --- tokenizer ---

GPT4_SPLIT_PATTERN: str

class Tokenizer:
    @staticmethod
    def train(
        texts: Iterable[str],
        vocab_size: int,
        pattern: str,
        special_tokens: list[str],
        batch_bytes: int = ...,
    ) -> Tokenizer: ...
    @staticmethod
    def load(path: Path) -> Tokenizer: ...
    @staticmethod
    def from_ranks(
        ranks: list[tuple[bytes, int]], pattern: str, special_tokens: list[tuple[str, int]]
    ) -> Tokenizer: ...
    @staticmethod
    def from_tiktoken_file(
        path: Path, pattern: str, special_tokens: list[tuple[str, int]]
    ) -> Tokenizer: ...
    def save(self, path: Path) -> None: ...
    def encode_ordinary(self, text: str) -> list[int]: ...
    def encode_ordinary_array(self, text: str) -> npt.NDArray[np.uint32]: ...
    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]: ...
    def encode_batch_flat(
        self, texts: list[str], num_threads: int | None = None
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]: ...
    def decode_bytes(self, ids: list[int]) -> bytes: ...
    def token_bytes(self, id: int) -> bytes: ...
    def ranks(self) -> list[tuple[bytes, int]]: ...
    def pretokenize(self, text: str) -> list[str]: ...
    def token_byte_lengths(self) -> npt.NDArray[np.int32]: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def n_ranks(self) -> int: ...
    @property
    def pattern(self) -> str: ...
    @property
    def special_tokens(self) -> dict[str, int]: ...
    @property
    def hash(self) -> str: ...

# --- data ---

from typing import Any  # noqa: E402

def read_shard(path: str) -> tuple[dict[str, Any], npt.NDArray[Any], npt.NDArray[np.uint64]]:
    """(header, tokens uint16/uint32, doc_starts) of a fully verified shard."""

class Packer:
    def __init__(
        self,
        out_dir: str,
        *,
        vocab_size: int,
        bos_id: int,
        tokenizer_hash: bytes,
        shard_tokens: int,
        chunk_tokens: int,
        compression: str,
        val_fraction: float,
        seed: int,
        prefix: str = "",
        first_document: int = 0,
    ) -> None: ...
    def set_split(self, split: str | None = None) -> None: ...
    def add_texts(self, texts: list[str], tokenizer: Tokenizer) -> None: ...
    def add_encoded(
        self, flat: npt.NDArray[np.uint32], lengths: npt.NDArray[np.uint64]
    ) -> None: ...
    def finish(self, source_json: str, extra_json: str | None = None) -> str: ...
    def abort(self) -> None: ...

class ShardDataset:
    def __init__(
        self,
        paths: list[str],
        *,
        tokenizer_hash: bytes | None = None,
        tokens: list[int] | None = None,
    ) -> None: ...
    @property
    def dtype(self) -> str: ...
    @property
    def itemsize(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def n_tokens(self) -> int: ...
    @property
    def n_documents(self) -> int: ...

class BatchStream:
    def __init__(
        self,
        dataset: ShardDataset,
        buffers: list[tuple[int, int]],
        keepalive: list[Any],
        *,
        mode: str,
        batch_size: int,
        seq_len: int,
        seed: int,
        shuffle: bool,
        epochs: int | None,
        rank: int,
        world_size: int,
        prefetch: int,
        buffer_docs: int,
        state: dict[str, Any] | None = None,
    ) -> None: ...
    def next(self) -> tuple[int, int] | None: ...
    def state(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
