//! The counter-based random generator every executor shares: Philox-4x32-10 (Salmon et al.,
//! "Parallel random numbers: as easy as 1, 2, 3", SC 2011), in plain `u32` arithmetic.
//!
//! A random op of the IR draws element `i` (its linear index) of stream `stream` as word `i % 4`
//! of `philox4x32_10([i/4 low, i/4 high, offset, stream], [seed, KEY_HI])`, mapped to (0, 1)
//! by [`to_uniform`]. The reference executor calls these functions; kernels compute the same
//! arithmetic on the device, and tests hold both to the known-answer vectors of Random123.

/// Multipliers and Weyl increments of Philox-4x32.
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The second key word, fixed so that a seed alone keys the generator ("CALM").
pub const KEY_HI: u32 = 0x4341_4C4D;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox-4x32 with 10 rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// A 32-bit word to a float in the open interval (0, 1): the top 23 bits, centred, so that
/// `log(u)` and `log(-log(u))` are always finite. (With 24 bits, `2^24 − 0.5` would round to
/// `2^24` in f32 and give exactly 1.) Every step is exact in f32.
pub fn to_uniform(word: u32) -> f32 {
    ((word >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// The raw word for element `index` of a random op keyed by `(seed, offset, stream)`.
pub fn word(seed: u32, offset: u32, stream: u32, index: u64) -> u32 {
    let block = index / 4;
    let out = philox4x32_10([block as u32, (block >> 32) as u32, offset, stream], [seed, KEY_HI]);
    out[(index % 4) as usize]
}

/// Uniform numbers in (0, 1) for elements `0..len` of a random op.
pub fn uniform(seed: u32, offset: u32, stream: u32, len: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    let mut block = 0u64;
    while out.len() < len {
        let words = philox4x32_10([block as u32, (block >> 32) as u32, offset, stream], [seed, KEY_HI]);
        out.extend(words.iter().take(len - out.len()).map(|&w| to_uniform(w)));
        block += 1;
    }
    out
}

/// A stream number for a name (FNV-1a, 32 bits), so that named things (parameters, inputs)
/// draw independent numbers under one seed.
pub fn name_stream(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors for philox4x32-10 (`kat_vectors`: counter, key, output).
    #[test]
    fn matches_the_random123_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    /// The first numbers of this project's own keying, pinned so that a change is noticed.
    #[test]
    fn calm_keying_is_pinned() {
        let u = uniform(1234, 0, 0, 6);
        let words: Vec<u32> = (0..6).map(|i| word(1234, 0, 0, i)).collect();
        assert_eq!(u, words.iter().map(|&w| to_uniform(w)).collect::<Vec<_>>());
        assert_eq!(words[..4], philox4x32_10([0, 0, 0, 0], [1234, KEY_HI]));
        assert_eq!(words[4..], philox4x32_10([1, 0, 0, 0], [1234, KEY_HI])[..2]);
        // Streams, offsets and seeds give different numbers.
        assert_ne!(uniform(1234, 0, 1, 4), uniform(1234, 0, 0, 4));
        assert_ne!(uniform(1234, 1, 0, 4), uniform(1234, 0, 0, 4));
        assert_ne!(uniform(1235, 0, 0, 4), uniform(1234, 0, 0, 4));
    }

    #[test]
    fn name_streams_are_fnv1a() {
        assert_eq!(name_stream(""), 0x811c_9dc5);
        assert_eq!(name_stream("a"), 0xe40c_292c);
        assert_ne!(name_stream("calm/x/weight"), name_stream("calm/x/bias"));
    }

    #[test]
    fn uniforms_stay_strictly_inside_the_unit_interval() {
        assert_eq!(to_uniform(0), 0.5 / 8_388_608.0);
        assert_eq!(to_uniform(u32::MAX), 1.0 - 0.5 / 8_388_608.0);
        assert!(to_uniform(u32::MAX) < 1.0);
        let u = uniform(7, 3, 2, 100_000);
        let mean = u.iter().map(|&x| x as f64).sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!(u.iter().all(|&x| x > 0.0 && x < 1.0));
    }
}
