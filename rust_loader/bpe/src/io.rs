//! Files: the project's tokenizer format, tiktoken `.tiktoken` ranks, hashing, atomic writes.
//!
//! Project format (UTF-8 text, `\n` line ends), version 1:
//!
//! ```text
//! lrt-bpe 1
//! pattern <base64 of the split pattern's UTF-8>
//! specials <N>
//! <base64 of special token string> <id>      (N lines, ascending id)
//! ranks <M>
//! <base64 of token bytes> <rank>             (M lines, rank = 0..M-1 in order)
//! ```
//!
//! The rank lines are exactly a tiktoken ranks file. The serialization is canonical (one byte
//! string per tokenizer), so the tokenizer hash is the sha256 of the file's bytes.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::{BpeError, Tokenizer};

/// First line of the project format.
pub const MAGIC: &str = "lrt-bpe 1";

const FIX: &str = "the file is damaged or not a tokenizer; re-create it with Tokenizer.save() \
                   (or retrain with `lrt-pipeline tokenize`)";

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The canonical serialization of `tok` (what [`Tokenizer::save`] writes).
pub fn serialize(tok: &Tokenizer) -> String {
    let ranks = tok.ranks();
    let mut s = String::with_capacity(ranks.len() * 16 + 256);
    s.push_str(MAGIC);
    s.push('\n');
    s.push_str(&format!("pattern {}\n", B64.encode(tok.pattern())));
    s.push_str(&format!("specials {}\n", tok.special_tokens().len()));
    for (name, id) in tok.special_tokens() {
        s.push_str(&format!("{} {id}\n", B64.encode(name)));
    }
    s.push_str(&format!("ranks {}\n", ranks.len()));
    for (rank, t) in ranks.iter().enumerate() {
        B64.encode_string(t, &mut s);
        s.push_str(&format!(" {rank}\n"));
    }
    s
}

/// Write `bytes` to `path` via a temp file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BpeError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| BpeError::InvalidValue(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(BpeError::io(path, e));
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, BpeError> {
    let bytes = std::fs::read(path).map_err(|e| BpeError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| BpeError::Format {
        path: path.to_path_buf(),
        line: 0,
        msg: format!("not UTF-8 text ({e}); {FIX}"),
    })
}

/// Load a file in the project format.
pub fn load(path: &Path) -> Result<Tokenizer, BpeError> {
    let text = read_text(path)?;
    let fail = |line: usize, msg: String| BpeError::Format {
        path: path.to_path_buf(),
        line,
        msg: format!("{msg}; {FIX}"),
    };
    let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
    let mut next = |what: &str| {
        lines
            .next()
            .filter(|(_, l)| !l.is_empty())
            .ok_or_else(|| fail(0, format!("file ends early, expected {what}")))
    };

    let (ln, l) = next("the header")?;
    if l != MAGIC {
        let shown: String = l.chars().take(40).collect();
        return Err(fail(
            ln,
            format!("expected header {MAGIC:?}, found {shown:?}"),
        ));
    }
    let (ln, l) = next("the pattern line")?;
    let pattern = l
        .strip_prefix("pattern ")
        .and_then(|p| B64.decode(p).ok())
        .and_then(|p| String::from_utf8(p).ok())
        .ok_or_else(|| fail(ln, "expected `pattern <base64 UTF-8>`".into()))?;
    let (ln, l) = next("the specials line")?;
    let n_specials =
        count_line(l, "specials").ok_or_else(|| fail(ln, "expected `specials <N>`".into()))?;
    // Counts come from the file: bound the reservation by what the file can hold (a line is at
    // least 4 bytes), or a damaged count aborts the process with "capacity overflow" / OOM.
    let max_lines = text.len() / 4;
    let mut specials = Vec::with_capacity(n_specials.min(max_lines));
    for _ in 0..n_specials {
        let (ln, l) = next("a special token line")?;
        let (b, id) = token_line(l).ok_or_else(|| fail(ln, "expected `<base64> <id>`".into()))?;
        let s = String::from_utf8(b).map_err(|_| fail(ln, "special token is not UTF-8".into()))?;
        specials.push((s, id));
    }
    let (ln, l) = next("the ranks line")?;
    let n_ranks = count_line(l, "ranks").ok_or_else(|| fail(ln, "expected `ranks <M>`".into()))?;
    let mut tokens = Vec::with_capacity(n_ranks.min(max_lines));
    for rank in 0..n_ranks {
        let (ln, l) = next("a rank line")?;
        let (b, r) = token_line(l).ok_or_else(|| fail(ln, "expected `<base64> <rank>`".into()))?;
        if r as usize != rank {
            return Err(fail(ln, format!("rank {r} out of order, expected {rank}")));
        }
        tokens.push(b);
    }
    if let Some((ln, l)) = lines.find(|(_, l)| !l.is_empty()) {
        let shown: String = l.chars().take(40).collect();
        return Err(fail(ln, format!("unexpected trailing line {shown:?}")));
    }
    Tokenizer::from_ranks(tokens, &pattern, specials).map_err(|e| match e {
        BpeError::InvalidValue(msg) => fail(0, msg),
        other => other,
    })
}

fn count_line(line: &str, key: &str) -> Option<usize> {
    line.strip_prefix(key)?.strip_prefix(' ')?.parse().ok()
}

fn token_line(line: &str) -> Option<(Vec<u8>, u32)> {
    let (b, r) = line.split_once(' ')?;
    Some((B64.decode(b).ok()?, r.parse().ok()?))
}

/// Read a tiktoken ranks file (`<base64 token> <rank>` per line, as
/// `tiktoken.load.load_tiktoken_bpe` reads it). Returns the token bytes indexed by rank; the
/// ranks must be exactly `0..M` (in any line order).
pub fn load_tiktoken_ranks(path: &Path) -> Result<Vec<Vec<u8>>, BpeError> {
    let text = read_text(path)?;
    let fail = |line: usize, msg: String| BpeError::Format {
        path: path.to_path_buf(),
        line,
        msg: format!("{msg}; expected a tiktoken ranks file (`<base64 token> <rank>` per line)"),
    };
    let mut pairs = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let mut parts = l.split_whitespace();
        let (Some(b), Some(r), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(fail(i + 1, "expected two fields".into()));
        };
        let b = B64
            .decode(b)
            .map_err(|e| fail(i + 1, format!("bad base64 ({e})")))?;
        let r: u32 = r
            .parse()
            .map_err(|_| fail(i + 1, format!("bad rank {r:?}")))?;
        pairs.push((b, r, i + 1));
    }
    ranks_from_pairs(pairs.into_iter().map(|(b, r, _)| (b, r)).collect()).map_err(|e| match e {
        BpeError::InvalidValue(msg) => fail(0, msg),
        other => other,
    })
}

/// Token bytes by rank from `(bytes, rank)` pairs; the ranks must be exactly `0..M`.
pub fn ranks_from_pairs(mut pairs: Vec<(Vec<u8>, u32)>) -> Result<Vec<Vec<u8>>, BpeError> {
    pairs.sort_by_key(|p| p.1);
    for (i, (_, r)) in pairs.iter().enumerate() {
        if *r as usize != i {
            return Err(BpeError::InvalidValue(format!(
                "ranks must be 0..{} without gaps or repeats; rank {i} is {}",
                pairs.len(),
                if (*r as usize) < i {
                    "repeated"
                } else {
                    "missing"
                }
            )));
        }
    }
    Ok(pairs.into_iter().map(|p| p.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GPT4_SPLIT_PATTERN;

    fn tok() -> Tokenizer {
        let docs = ["hello world hello there", "the cat sat on the mat"];
        Tokenizer::train(&docs, 270, GPT4_SPLIT_PATTERN, &["<|bos|>".into()]).unwrap()
    }

    #[test]
    fn corrupt_files_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bpe");
        tok().save(&path).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        let cases = [
            (good.replacen("lrt-bpe 1", "lrt-bpe 9", 1), 1),
            (good.replacen("ranks 269", "ranks 270", 1), 0),
            (good.replacen(" 100\n", " 101\n", 1), 106),
            (good.replacen("specials 1", "specials x", 1), 3),
            (format!("{good}junk\n"), 275),
        ];
        for (text, line) in cases {
            std::fs::write(&path, text).unwrap();
            match load(&path) {
                Err(BpeError::Format {
                    path: p,
                    line: l,
                    msg,
                }) => {
                    assert_eq!(p, path);
                    assert_eq!(l, line, "{msg}");
                    assert!(msg.contains("Tokenizer.save"));
                }
                other => panic!("expected a format error, got {other:?}"),
            }
        }
        let missing = dir.path().join("nope.bpe");
        assert!(matches!(load(&missing), Err(BpeError::Io { .. })));
    }

    #[test]
    fn tiktoken_file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tiktoken");
        let t = tok();
        let mut text = String::new();
        // Reverse line order: the loader must sort by rank.
        for (r, b) in t.ranks().iter().enumerate().rev() {
            text.push_str(&format!("{} {r}\n", B64.encode(b)));
        }
        std::fs::write(&path, text).unwrap();
        assert_eq!(load_tiktoken_ranks(&path).unwrap(), t.ranks());
    }
}
