"""Data: what the download and tokenize stages make, and the loader that reads it back.

- `sources` (the download stage, the raw manifest), `documents` (builtin and local-file readers),
  `http` (resumable fetch, sha256), `datasets/` (sharded hosted datasets);
- `tokenizer` (the Rust byte-level BPE), `tokenize` (the tokenize stage's work);
- `shards` (the token-shard format and manifest), `packing` + `pack_inputs` (writing shards),
  `parts` (multi-machine parts and their merge);
- `loader` (the zero-copy batch loader).

Imports only `pipeline.config`, `pipeline.atomic` and the Rust extension.
"""
