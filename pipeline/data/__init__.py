"""Data: raw text sources and hosted datasets (`sources/`), the Rust byte-level BPE
(`tokenizer`), token shards and their manifest (`shards`), multi-machine parts (`parts`) and
the zero-copy batch loader (`loader`). Imports only `pipeline.config`, `pipeline.atomic` and the
Rust extension.
"""
