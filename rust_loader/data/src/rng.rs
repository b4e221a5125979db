//! Deterministic hashing and shuffling. Hand-written (splitmix64 + Fisher-Yates) rather than
//! the `rand` crate so the order of documents and windows is fixed by this file alone and
//! cannot change with a dependency upgrade: a seed names the same data order forever.

/// splitmix64 finaliser: a bijective 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) from (seed, index): the train/val split of document `index`.
pub fn unit(seed: u64, index: u64) -> f64 {
    (mix64(mix64(seed) ^ index) >> 11) as f64 / (1u64 << 53) as f64
}

pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64, stream: u64) -> Self {
        SplitMix(mix64(seed) ^ mix64(stream.wrapping_add(0x5851_F42D_4C95_7F2D)))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// In [0, n) by multiply-shift (bias < n / 2^64, irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Permutation of 0..n for (seed, epoch), Fisher-Yates.
pub fn permutation(n: u32, seed: u64, epoch: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n).collect();
    let mut r = SplitMix::new(seed, epoch);
    for i in (1..p.len()).rev() {
        let j = r.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let p = permutation(1000, 7, 0);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, permutation(1000, 7, 0));
        assert_ne!(p, permutation(1000, 7, 1));
        assert_ne!(p, permutation(1000, 8, 0));
    }

    #[test]
    fn unit_is_roughly_uniform() {
        let n = 100_000;
        let below = (0..n).filter(|&i| unit(3, i) < 0.1).count();
        assert!((9_000..11_000).contains(&below), "{below}");
    }
}
