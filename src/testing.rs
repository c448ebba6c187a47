//! Helpers shared by the unit tests (compiled only under `cfg(test)`).

/// Byte-level mutations for robustness tests (the stable-Rust stand-in for a fuzzer): each
/// mutant truncates, flips, inserts, deletes or duplicates bytes of a valid input, addressed by
/// (seed, index) so a failure names a reproducible case.
pub fn mutants(
    valid: &[u8],
    seed: u64,
    count: usize,
) -> impl Iterator<Item = (usize, Vec<u8>)> + '_ {
    (0..count).map(move |i| {
        let mut rng = crate::rng::Rng::at(seed, 0, &[i as u64]);
        let mut b = valid.to_vec();
        for _ in 0..1 + rng.below(4) {
            let len = b.len().max(1);
            let at = rng.below(len);
            match rng.below(5) {
                0 => b.truncate(at),
                1 => {
                    if let Some(x) = b.get_mut(at) {
                        *x ^= 1 << rng.below(8);
                    }
                }
                2 => b.insert(at.min(b.len()), rng.next_u64() as u8),
                3 => {
                    if at < b.len() {
                        b.remove(at);
                    }
                }
                _ => {
                    let end = (at + 1 + rng.below(16)).min(b.len());
                    let chunk = b[at.min(end)..end].to_vec();
                    b.splice(at.min(b.len())..at.min(b.len()), chunk);
                }
            }
        }
        (i, b)
    })
}

/// Runs `f` on every mutant of `valid` and fails on the first one that panics.
pub fn assert_no_panic_on_mutants(what: &str, valid: &[u8], count: usize, f: impl Fn(&[u8])) {
    for (i, bytes) in mutants(valid, 17, count) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&bytes)));
        assert!(
            result.is_ok(),
            "{what}: mutant {i} ({} bytes) panicked",
            bytes.len()
        );
    }
}
