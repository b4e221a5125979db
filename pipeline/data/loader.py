"""Zero-copy batch loader over packed token shards.

    from pipeline.data.loader import DataLoader
    loader = DataLoader("data/tokens", "train", batch_size=32, seq_len=2048, seed=0)
    for inputs, targets in loader:                       # (B, T) uint16/int32, CPU (pinned w/ CUDA)
        x = inputs.to("cuda", non_blocking=True).long()
        ...
    torch.save({"loader": loader.state_dict()}, "ckpt.pt")

A Rust thread (`pipeline._rust.BatchStream`) samples rows and writes them straight into a ring of
`prefetch + 1` torch tensors of shape (B, T+1) allocated once here; `inputs`/`targets` are views
of the ring slot, so no token is copied between Rust and torch and no tensor is allocated per
batch. Modes, order, rank sharding and state are specified in docs/SHARD_FORMAT.md.

Safety of handing torch memory to Rust: the ring tensors are contiguous and never resized; their
`(data_ptr, nbytes)` go to Rust together with the tensors themselves, which the Rust object holds
(so the memory outlives the writer thread, which is joined before they are released). A slot is
written by Rust only while Python does not hold it: Rust gets it back only after `prefetch`
further batches have been drawn, which is the validity window the contract promises.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from pipeline import _rust
from pipeline.data.shards import Manifest, read_manifest

__all__ = ["DataLoader", "validation_loader"]

STATE_VERSION = 1
# Documents in the best-fit buffer (nanochat uses 1000): larger fits rows better, costs a scan.
DEFAULT_BESTFIT_BUFFER = 1000


class DataLoader:
    """Batches of (inputs, targets) from a packed split, written by Rust into torch buffers.

    Args:
        data_dir: folder with `manifest.json` and the shards (`pipeline.data.packing.pack`).
        split: "train" or "val".
        batch_size, seq_len: B and T of the yielded (B, T) tensors.
        mode: "bestfit" (every row starts with BOS at a document start, rows filled by best-fit
            packing, cropping the last document) or "contiguous" (windows of T+1 at stride T).
        seed, shuffle: order of documents/windows, a fixed function of (seed, epoch).
        epochs: None = loop forever; else stop after that many passes (last batch may be short).
        rank, world_size: each rank sees a disjoint share of rows (same seed on every rank).
        tokenizer_hash: hex sha256 of the tokenizer in use; shards written by another raise
            TokenizerMismatchError. Default: the manifest's.
        pin_memory: pin the ring buffers (default: when CUDA is available).
        prefetch: batches Rust may run ahead; a yielded batch stays valid until `prefetch`
            further batches are drawn.
        bestfit_buffer: documents in the best-fit candidate buffer.

    Example:
        >>> loader = DataLoader("data/tokens", "val", 8, 256, mode="contiguous",
        ...                     shuffle=False, epochs=1)  # doctest: +SKIP
        >>> inputs, targets = next(iter(loader))  # doctest: +SKIP
        >>> inputs.shape, inputs.dtype  # doctest: +SKIP
        (torch.Size([8, 256]), torch.uint16)
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: Literal["train", "val"],
        batch_size: int,
        seq_len: int,
        *,
        mode: Literal["bestfit", "contiguous"] = "bestfit",
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        tokenizer_hash: str | None = None,
        pin_memory: bool | None = None,
        prefetch: int = 2,
        bestfit_buffer: int = DEFAULT_BESTFIT_BUFFER,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r} is not 'train' or 'val'")
        if mode not in ("bestfit", "contiguous"):
            raise ValueError(f"mode={mode!r} is not 'bestfit' or 'contiguous'")
        for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("prefetch", prefetch),
                        ("world_size", world_size), ("bestfit_buffer", bestfit_buffer)):  # fmt: skip
            if int(v) < 1:
                raise ValueError(f"{name}={v} must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs={epochs} must be >= 1 or None")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")

        self.manifest: Manifest = read_manifest(data_dir)
        entries = self.manifest.splits[split]
        if not entries:
            raise ValueError(
                f"{Path(data_dir) / 'manifest.json'}: split {split!r} has no shards "
                "(val_fraction 0 or a tiny corpus); re-run `lrt-pipeline tokenize` with more data"
            )
        expected = tokenizer_hash if tokenizer_hash is not None else self.manifest.tokenizer_hash
        try:
            expected_bytes = bytes.fromhex(expected)
        except ValueError as e:
            raise ValueError(f"tokenizer_hash={expected!r} is not hex") from e
        self._dataset = _rust.ShardDataset(
            [str(e.path) for e in entries],
            tokenizer_hash=expected_bytes,
            tokens=[e.tokens for e in entries],
        )
        self.split, self.batch_size, self.seq_len = split, int(batch_size), int(seq_len)
        self.mode, self.seed, self.shuffle, self.epochs = mode, int(seed), bool(shuffle), epochs
        self.rank, self.world_size, self.prefetch = int(rank), int(world_size), int(prefetch)
        self.bestfit_buffer = int(bestfit_buffer)
        self._split_tokens = self.manifest.split_tokens(split)

        self.dtype = torch.uint16 if self._dataset.itemsize == 2 else torch.int32
        pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        shape = (self.batch_size, self.seq_len + 1)
        # The ring Rust writes into, allocated once; views are made once too.
        self._buffers = [
            torch.empty(shape, dtype=self.dtype, pin_memory=pin) for _ in range(self.prefetch + 1)
        ]
        self._views = [(b[:, :-1], b[:, 1:]) for b in self._buffers]
        self._position: dict[str, Any] = {"epoch": 0, "cursor": 0, "buffer": [], "batches": 0}
        self._stream: Any = None

    # --- iteration ----------------------------------------------------------------------------

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._position = dict(self._stream.state())
            self._stream.close()
            self._stream = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields batches from the current position (the start, or a loaded state) onwards.

        One iteration is live at a time: starting a new one stops the previous one.
        """
        self._close_stream()
        stream = _rust.BatchStream(
            self._dataset,
            [(b.data_ptr(), b.numel() * b.element_size()) for b in self._buffers],
            list(self._buffers),
            mode=self.mode,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            seed=self.seed,
            shuffle=self.shuffle,
            epochs=self.epochs,
            rank=self.rank,
            world_size=self.world_size,
            prefetch=self.prefetch,
            buffer_docs=self.bestfit_buffer,
            state=self._position,
        )
        self._stream = stream
        return self._generate(stream)

    def _generate(self, stream: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            item = stream.next()  # GIL released while waiting for Rust
            if item is None:
                return
            slot, rows = item
            inputs, targets = self._views[slot]
            if rows < self.batch_size:  # the last batch of the last epoch
                inputs, targets = inputs[:rows], targets[:rows]
            yield inputs, targets

    def close(self) -> None:
        """Stops the prefetch thread (the position is kept; iterating again resumes)."""
        self._close_stream()

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.close()

    # --- state --------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "mode": self.mode,
            "seed": self.seed,
            "shuffle": int(self.shuffle),
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "bestfit_buffer": self.bestfit_buffer,
            "split_tokens": self._split_tokens,
        }

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch yielded: plain ints, strs and a list of ints.

        `load_state_dict` of it on a loader with the same configuration yields exactly the
        batches this loader would yield next.
        """
        position = dict(self._stream.state()) if self._stream is not None else self._position
        return {**self._config(), **position, "buffer": [int(x) for x in position["buffer"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes at exactly the batch after the one `state` was taken at.

        Raises:
            ValueError: the state was saved by a loader of another configuration or dataset.
        """
        for key, want in self._config().items():
            if state.get(key) != want:
                raise ValueError(
                    f"loader state has {key}={state.get(key)!r} but this loader has {want!r}; "
                    "resume with the configuration and data the state was saved with"
                )
        self._close_stream()
        self._position = {
            "epoch": int(state["epoch"]),
            "cursor": int(state["cursor"]),
            "buffer": [int(x) for x in state["buffer"]],
            "batches": int(state["batches"]),
        }


def validation_loader(
    data_dir: str | Path,
    batch_size: int,
    seq_len: int,
    *,
    tokenizer_hash: str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Every window of the val split once, in order: contiguous, unshuffled, one epoch.

    Training's periodic validation and the eval stage both read val through this, so they
    score the same windows.
    """
    return DataLoader(
        data_dir,
        "val",
        batch_size,
        seq_len,
        mode="contiguous",
        shuffle=False,
        epochs=1,
        rank=rank,
        world_size=world_size,
        tokenizer_hash=tokenizer_hash,
    )
