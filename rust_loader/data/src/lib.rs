//! Token shards and loader (placeholder).
