//! Property-based fuzzing of lrt_bpe's public surface: encode/decode round trips, decoding of
//! arbitrary ids, and loading tokenizer files from garbage (random bytes and mutated valid
//! files). The contract: a typed `BpeError`, never a panic, an abort or a huge allocation.
//!
//! Run: `CARGO_BUILD_JOBS=1 cargo test -p lrt_bpe --test fuzz` (256 cases per property; raise
//! with `PROPTEST_CASES=100000` for a longer local run). Failing seeds are kept in
//! `tests/fuzz.proptest-regressions`; every crash found becomes a named test below.

use std::path::Path;
use std::sync::OnceLock;

use lrt_bpe::{BpeError, Tokenizer, GPT4_SPLIT_PATTERN};
use proptest::prelude::*;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let docs: Vec<String> = (0..30)
            .map(|i| {
                format!(
                    "Doc {i}: the quick brown fox, naïve café ☕ 中文 {} <|bos|> 12345\n",
                    "ab ".repeat(i)
                )
            })
            .collect();
        Tokenizer::train(&docs, 330, GPT4_SPLIT_PATTERN, &["<|bos|>".into()]).unwrap()
    })
}

fn valid_file() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok.bpe");
        tokenizer().save(&p).unwrap();
        std::fs::read(&p).unwrap()
    })
}

/// Loads `bytes` as a tokenizer file; Ok or a typed error that names the file.
fn load_bytes(bytes: &[u8]) -> Result<Tokenizer, BpeError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fuzz.bpe");
    std::fs::write(&p, bytes).unwrap();
    let res = Tokenizer::load(&p);
    if let Err(e) = &res {
        assert!(
            matches!(e, BpeError::Format { .. }),
            "garbage must be a Format error, got {e:?}"
        );
        assert!(e.to_string().contains("fuzz.bpe"), "{e}");
    }
    res
}

fn header(rest: &str) -> Vec<u8> {
    format!(
        "lrt-bpe 1\npattern {}\n{rest}",
        b64(GPT4_SPLIT_PATTERN.as_bytes())
    )
    .into_bytes()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// --- regressions found by the properties below ----------------------------------------------

#[test]
fn huge_counts_are_format_errors_not_allocations() {
    // `Vec::with_capacity(count)` on a count read from the file aborted the process
    // ("capacity overflow" / out of memory) before this was bounded.
    for rest in [
        "specials 18446744073709551615\n",
        "specials 0\nranks 18446744073709551615\n",
        "specials 4000000000000\n",
        "specials 0\nranks 4000000000000\nAA== 0\n",
    ] {
        assert!(load_bytes(&header(rest)).is_err(), "{rest}");
    }
}

#[test]
fn valid_file_loads_and_missing_file_is_io() {
    let tok = load_bytes(valid_file()).unwrap();
    assert_eq!(tok.hash(), tokenizer().hash());
    let err = Tokenizer::load(Path::new("/nonexistent/tok.bpe")).unwrap_err();
    assert!(matches!(err, BpeError::Io { .. }), "{err:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_decode_roundtrip(s in any::<String>()) {
        let tok = tokenizer();
        let ids = tok.encode_ordinary(&s).unwrap();
        prop_assert!(ids.iter().all(|&i| (i as usize) < tok.n_ranks()), "no special ids");
        prop_assert_eq!(tok.decode_bytes(&ids).unwrap(), s.as_bytes());
    }

    #[test]
    fn decode_any_ids_never_panics(ids in prop::collection::vec(any::<u32>(), 0..64)) {
        let tok = tokenizer();
        let in_range = ids.iter().all(|&i| (i as usize) < tok.vocab_size());
        match tok.decode_bytes(&ids) {
            Ok(bytes) => {
                prop_assert!(in_range);
                let want: usize = ids.iter().map(|&i| tok.token_bytes(i).unwrap().len()).sum();
                prop_assert_eq!(bytes.len(), want);
            }
            Err(e) => {
                prop_assert!(!in_range);
                prop_assert!(matches!(e, BpeError::InvalidValue(_)), "{:?}", e);
            }
        }
    }

    #[test]
    fn load_random_bytes_is_an_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(load_bytes(&bytes).is_err());
    }

    #[test]
    fn load_random_lines_after_a_valid_header_never_panics(
        lines in prop::collection::vec("[a-zA-Z0-9+/= ]{0,24}", 0..8),
        count in prop_oneof![Just(u64::MAX), 0u64..300, any::<u64>()],
    ) {
        let rest = format!("specials {count}\n{}\n", lines.join("\n"));
        let _ = load_bytes(&header(&rest));
        let rest = format!("specials 0\nranks {count}\n{}\n", lines.join("\n"));
        let _ = load_bytes(&header(&rest));
    }

    #[test]
    fn load_mutated_valid_file_never_panics(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let mut b = valid_file().to_vec();
        let i = pos.index(b.len());
        if cut { b.truncate(i) } else { b[i] = byte }
        if let Ok(tok) = load_bytes(&b) {
            // A mutation that still parses is a different, self-consistent tokenizer.
            let ids = tok.encode_ordinary("hello world").unwrap();
            prop_assert!(tok.decode_bytes(&ids).is_ok());
        }
    }
}
