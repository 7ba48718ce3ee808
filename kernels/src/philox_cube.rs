//! The shared generator on the device: the same Philox-4x32-10 arithmetic as [`crate::philox`],
//! with the 32×32→64-bit product built from 16-bit halves (no 64-bit integers needed).

use cubecl::prelude::*;

#[cube]
fn mulhi(a: u32, b: u32) -> u32 {
    let (a_lo, a_hi) = (a & 0xFFFF, a >> 16);
    let (b_lo, b_hi) = (b & 0xFFFF, b >> 16);
    let lo_lo = a_lo * b_lo;
    let lo_hi = a_lo * b_hi;
    let hi_lo = a_hi * b_lo;
    let mid = (lo_lo >> 16) + (lo_hi & 0xFFFF) + (hi_lo & 0xFFFF);
    a_hi * b_hi + (lo_hi >> 16) + (hi_lo >> 16) + (mid >> 16)
}

/// Word `index % 4` of the block holding element `index` (indices below 2³²).
#[cube]
pub fn philox_word(seed: u32, offset: u32, stream: u32, index: u32) -> u32 {
    let mut c0 = index / 4;
    let mut c1 = 0u32;
    let mut c2 = offset;
    let mut c3 = stream;
    let mut k0 = seed;
    let mut k1 = 0x4341_4C4Du32;
    #[unroll]
    for round in 0..10u32 {
        if round > 0 {
            k0 += 0x9E37_79B9u32;
            k1 += 0xBB67_AE85u32;
        }
        let hi0 = mulhi(0xD251_1F53u32, c0);
        let lo0 = 0xD251_1F53u32 * c0;
        let hi1 = mulhi(0xCD9E_8D57u32, c2);
        let lo1 = 0xCD9E_8D57u32 * c2;
        let n0 = hi1 ^ c1 ^ k0;
        let n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    let lane = index % 4;
    let mut word = c0;
    if lane == 1 {
        word = c1;
    }
    if lane == 2 {
        word = c2;
    }
    if lane == 3 {
        word = c3;
    }
    word
}

/// The uniform number in (0, 1) of element `index`: `((w >> 9) + 0.5) · 2⁻²³`.
#[cube]
pub fn uniform_at(seed: u32, offset: u32, #[comptime] stream: u32, index: u32) -> f32 {
    let w = philox_word(seed, offset, stream, index);
    (f32::cast_from(w >> 9) + 0.5) * 1.192_092_9e-7
}
