//! Byte-level BPE (placeholder).
