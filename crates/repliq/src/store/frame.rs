//! Frame header encoding: word0 (length, flags, self-check) and the record CRC.
//!
//! See [`crate::store::layout`] for the byte layout.

use crate::store::layout::{FLAGS_KNOWN, FLAG_NOT_COMPLETE, FLAG_PADDING};

/// Seed mixed into the word0 check so that a word of all zeros never validates.
const CHECK_SEED: u32 = 0x5EED_0001;

/// CRC32C of `data` continuing from `crc`, identical to
/// `crc32c::crc32c_append`. Small inputs (headers and small messages, the
/// common case on the hot path) use the SSE4.2 instruction inline instead of
/// the crate's three-way path, whose set-up dominates below a few hundred bytes.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() <= 256 && std::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2 (checked just above).
            return unsafe { crc32c_small_sse42(crc, data) };
        }
    }
    crc32c::crc32c_append(crc, data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_small_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut c = u64::from(!crc);
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        c = _mm_crc32_u64(c, v);
    }
    let mut c = c as u32;
    for &b in chunks.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

/// The 16-bit self-check of word0 over its length and flags.
#[inline]
pub fn check16(len: u32, flags: u16) -> u16 {
    let v = u64::from(len) | (u64::from(flags) << 32);
    let b = v.to_le_bytes();
    (crc32c_append(CHECK_SEED, &b[..6]) & 0xFFFF) as u16
}

/// Builds word0 from a frame length and flags.
#[inline]
pub fn encode_word0(len: u32, flags: u16) -> u64 {
    u64::from(len) | (u64::from(flags) << 32) | (u64::from(check16(len, flags)) << 48)
}

/// Why a frame header is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFault {
    /// The 16-bit check of word0 does not match.
    Check,
    /// A flag bit this version does not know is set.
    UnknownFlags,
    /// The length is too small, or runs past the end of the segment.
    Length,
}

impl HeaderFault {
    /// A short description for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            HeaderFault::Check => "frame header check mismatch",
            HeaderFault::UnknownFlags => "unknown frame flags",
            HeaderFault::Length => "frame length out of bounds",
        }
    }
}

/// Splits a non-zero word0 into `(length, flags)`, verifying its check and flags.
#[inline]
pub fn decode_word0(w: u64) -> Result<(u32, u16), HeaderFault> {
    let len = w as u32;
    let flags = (w >> 32) as u16;
    let check = (w >> 48) as u16;
    if check != check16(len, flags) {
        return Err(HeaderFault::Check);
    }
    if flags & !FLAGS_KNOWN != 0 {
        return Err(HeaderFault::UnknownFlags);
    }
    Ok((len, flags))
}

/// word0 of a pending (claimed, not complete) frame of `len` bytes.
#[inline]
pub fn pending_word0(len: u32) -> u64 {
    encode_word0(len, FLAG_NOT_COMPLETE)
}

/// word0 of a padding frame of `len` bytes.
#[inline]
pub fn padding_word0(len: u32) -> u64 {
    encode_word0(len, FLAG_PADDING)
}

/// CRC32C of a data frame: length, committed flags, epoch, then the payload.
#[inline]
pub fn frame_crc(len: u32, flags: u16, epoch: u32, payload: &[u8]) -> u32 {
    let mut h = [0u8; 10];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..6].copy_from_slice(&flags.to_le_bytes());
    h[6..10].copy_from_slice(&epoch.to_le_bytes());
    crc32c_append(crc32c_append(0, &h), payload)
}

/// word1 of a committed data frame.
#[inline]
pub fn data_word1(epoch: u32, crc: u32) -> u64 {
    u64::from(epoch) | (u64::from(crc) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_zero_never_valid() {
        for (len, flags) in [(16u32, 0u16), (8, FLAG_PADDING), (4096, FLAG_NOT_COMPLETE)] {
            assert_eq!(decode_word0(encode_word0(len, flags)), Ok((len, flags)));
        }
        assert!(decode_word0(0).is_err());
    }

    #[test]
    fn the_damage_marker_never_validates() {
        assert!(decode_word0(crate::store::layout::DAMAGED_WORD0).is_err());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let w = encode_word0(1234, 0);
        for bit in 0..64 {
            let bad = w ^ (1u64 << bit);
            assert!(decode_word0(bad).is_err(), "bit {bit} flip undetected");
        }
    }

    #[test]
    fn small_crc_path_matches_the_crate() {
        let data: Vec<u8> = (0..600u32)
            .map(|i| (i.wrapping_mul(2654435761u32) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            for seed in [0u32, 1, 0xdead_beef] {
                assert_eq!(
                    crc32c_append(seed, &data[..len]),
                    crc32c::crc32c_append(seed, &data[..len]),
                    "len {len} seed {seed:#x}"
                );
            }
        }
    }

    #[test]
    fn crc_covers_header_fields() {
        let a = frame_crc(20, 0, 1, b"abcd");
        assert_ne!(a, frame_crc(20, 0, 2, b"abcd"));
        assert_ne!(a, frame_crc(24, 0, 1, b"abcd"));
        assert_ne!(a, frame_crc(20, 4, 1, b"abcd"));
        assert_ne!(a, frame_crc(20, 0, 1, b"abce"));
    }
}
