//! The content `cstor bench --verify` writes, and the check of what it
//! reads back.
//!
//! Every logical block of the LUN written in verify mode starts with a
//! 32-byte header, followed by a pseudo-random body drawn from the header:
//!
//! ```text
//! offset  len  field
//!      0    8  MAGIC "cstorBN1"
//!      8    8  LBA of the block (little endian)
//!     16    8  seed of the run (--seed)
//!     24    8  generation: the write that put it there (1, 2, ...)
//!     32    …  xorshift64 stream seeded from (LBA, seed, generation)
//! ```
//!
//! So a block read back tells by itself whether it is one of ours, whether
//! it is at the right LBA (a misplaced block names another), from this
//! seed, and intact (a torn or corrupted body differs from the stream its
//! header names). A run that knows which generation it last wrote to a block
//! also catches a stale one (a lost write).

/// First 8 bytes of every block written in verify mode.
pub const MAGIC: [u8; 8] = *b"cstorBN1";
/// Header length in bytes; the smallest logical block (512) holds it.
pub const HEADER_BYTES: usize = 32;
const LBA_AT: usize = MAGIC.len();
const SEED_AT: usize = LBA_AT + 8;
const GENERATION_AT: usize = SEED_AT + 8;
const _: () = assert!(GENERATION_AT + 8 == HEADER_BYTES);

/// Fills `block` (one logical block) with the content of `lba` for `seed`
/// and `generation`.
pub fn fill(block: &mut [u8], lba: u64, seed: u64, generation: u64) {
    let mut x = stream_seed(lba, seed, generation);
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or(&bytes));
    }
    let header = [
        &MAGIC[..],
        &lba.to_le_bytes(),
        &seed.to_le_bytes(),
        &generation.to_le_bytes(),
    ]
    .concat();
    if let Some(dst) = block.get_mut(..HEADER_BYTES) {
        dst.copy_from_slice(&header);
    }
}

fn stream_seed(lba: u64, seed: u64, generation: u64) -> u64 {
    let x = lba.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ generation.wrapping_mul(0xA24B_AED4_963E_E407);
    // xorshift must not start at 0.
    if x == 0 {
        0x2545_F491_4F6C_DD1D
    } else {
        x
    }
}

/// Why a block read back is not what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// No verify header at all (never written in verify mode, zeros, or
    /// overwritten by something else): the first 16 bytes, in hex.
    NotOurs { head: String },
    /// A verify block of another LBA (misplaced IO).
    WrongLba { found: u64 },
    /// A verify block of another run (another --seed).
    WrongSeed { found: u64 },
    /// Our block, an older or newer generation than the last one written.
    WrongGeneration { expected: u64, found: u64 },
    /// Header right, body differs from byte `offset` on (torn or corrupt).
    Body { generation: u64, offset: usize },
}

impl Mismatch {
    /// What was found instead, for a report.
    pub fn actual(&self) -> String {
        match self {
            Mismatch::NotOurs { head } => format!("not a cstor bench block (starts {head})"),
            Mismatch::WrongLba { found } => format!("the block of LBA {found}"),
            Mismatch::WrongSeed { found } => format!("a block of seed {found}"),
            Mismatch::WrongGeneration { found, .. } => format!("generation {found}"),
            Mismatch::Body { generation, offset } => {
                format!("generation {generation} header, body differs from byte {offset}")
            }
        }
    }
}

/// Checks one block read back at `lba`. `expected_generation` is the last
/// generation this run wrote there, or `None` when it does not know (any
/// generation of `seed` is accepted then).
pub fn check(
    block: &[u8],
    lba: u64,
    seed: u64,
    expected_generation: Option<u64>,
) -> Result<(), Mismatch> {
    let field = |at: usize| -> Option<u64> {
        let bytes: [u8; 8] = block.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    };
    let head = || {
        block
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    if block.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(Mismatch::NotOurs { head: head() });
    }
    let (Some(found_lba), Some(found_seed), Some(generation)) =
        (field(LBA_AT), field(SEED_AT), field(GENERATION_AT))
    else {
        return Err(Mismatch::NotOurs { head: head() });
    };
    if found_lba != lba {
        return Err(Mismatch::WrongLba { found: found_lba });
    }
    if found_seed != seed {
        return Err(Mismatch::WrongSeed { found: found_seed });
    }
    if let Some(expected) = expected_generation {
        if expected != generation {
            return Err(Mismatch::WrongGeneration {
                expected,
                found: generation,
            });
        }
    }
    let mut want = vec![0u8; block.len()];
    fill(&mut want, lba, seed, generation);
    if let Some(offset) = block.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(Mismatch::Body { generation, offset });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_block_checks_and_names_itself() {
        for len in [512usize, 4096] {
            let mut b = vec![0u8; len];
            fill(&mut b, 77, 5, 3);
            assert_eq!(check(&b, 77, 5, Some(3)), Ok(()));
            assert_eq!(check(&b, 77, 5, None), Ok(()));
            assert_eq!(
                check(&b, 78, 5, None),
                Err(Mismatch::WrongLba { found: 77 })
            );
            assert_eq!(
                check(&b, 77, 6, None),
                Err(Mismatch::WrongSeed { found: 5 })
            );
            assert_eq!(
                check(&b, 77, 5, Some(4)),
                Err(Mismatch::WrongGeneration {
                    expected: 4,
                    found: 3
                })
            );
        }
    }

    #[test]
    fn a_flipped_body_byte_is_found_at_its_offset() {
        let mut b = vec![0u8; 4096];
        fill(&mut b, 1, 2, 3);
        b[1000] ^= 1;
        assert_eq!(
            check(&b, 1, 2, Some(3)),
            Err(Mismatch::Body {
                generation: 3,
                offset: 1000
            })
        );
    }

    #[test]
    fn zeros_are_not_ours() {
        let b = vec![0u8; 512];
        assert!(matches!(
            check(&b, 0, 1, None),
            Err(Mismatch::NotOurs { .. })
        ));
    }

    #[test]
    fn generations_differ_in_the_body() {
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        fill(&mut a, 9, 9, 1);
        fill(&mut b, 9, 9, 2);
        assert_ne!(a[HEADER_BYTES..], b[HEADER_BYTES..]);
    }
}
