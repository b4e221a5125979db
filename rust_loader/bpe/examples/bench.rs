//! Pure-Rust timing of training and thread scaling of `encode_batch`, for machines without the
//! Python environment. Input: one file of documents separated by NUL bytes
//! (`python -c` snippet in docs/TOKENIZER.md writes the benchmark corpus that way).
//!
//! Run: `cargo run --release -p lrt_bpe --example bench -- corpus.bin [vocab_size] [threads...]`

use std::time::Instant;

use lrt_bpe::{Tokenizer, GPT4_SPLIT_PATTERN};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: bench CORPUS [VOCAB] [THREADS...]");
    let vocab: usize = args
        .get(2)
        .map_or(32768, |v| v.parse().expect("vocab size"));
    let threads: Vec<usize> = if args.len() > 3 {
        args[3..]
            .iter()
            .map(|t| t.parse().expect("thread count"))
            .collect()
    } else {
        vec![1, 2]
    };
    let raw = std::fs::read(path).expect("read corpus");
    let text = String::from_utf8(raw).expect("UTF-8 corpus");
    let docs: Vec<&str> = text.split('\0').filter(|d| !d.is_empty()).collect();
    let mb = text.len() as f64 / 1e6;
    println!(
        "corpus {mb:.1} MB, {} docs, {} CPUs",
        docs.len(),
        rayon::current_num_threads()
    );

    let t = Instant::now();
    let tok = Tokenizer::train(&docs, vocab, GPT4_SPLIT_PATTERN, &[]).expect("train");
    println!("train vocab {vocab}: {:.2} s", t.elapsed().as_secs_f64());
    if let Ok(out) = std::env::var("BENCH_TIKTOKEN_OUT") {
        // The ranks as a tiktoken file, so tiktoken can be timed on the same ranks elsewhere.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let lines: String = tok
            .ranks()
            .iter()
            .enumerate()
            .map(|(r, b)| format!("{} {r}\n", b64.encode(b)))
            .collect();
        std::fs::write(&out, lines).expect("write ranks");
        let n: usize = tok
            .encode_batch(&docs, None)
            .expect("encode")
            .iter()
            .map(Vec::len)
            .sum();
        println!("wrote {out}; corpus tokens {n}");
    }

    let mut base = 0.0;
    for &k in &threads {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            let out = tok.encode_batch(&docs, Some(k)).expect("encode");
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(out);
        }
        if k == threads[0] {
            base = best;
        }
        println!(
            "encode {k:>2} threads: {:.1} MB/s (speedup {:.2}x vs {} thread)",
            mb / best,
            base / best,
            threads[0]
        );
    }
}
