//! Client-to-server payload masking (RFC 6455 §5.3).
//!
//! Every byte a client sends is XORed with a 4-byte key; unmasking is the
//! one thing the reader does to every payload byte, so it works a machine
//! word at a time.

/// XORs `data` with `mask` in place (masking and unmasking are the same).
///
/// `offset` is the number of payload bytes of the same frame already
/// unmasked before `data`: a frame split across reads continues with the
/// right key byte.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset % 4);
    // Each 8-byte chunk starts at a multiple of 4 from the start of `data`,
    // so every chunk sees the key in the same phase: one word serves all.
    let key_word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]) ^ key_word;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // The remainder also starts at a multiple of 8, hence of 4: same phase.
    for (index, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[index % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_mask_bytewise(data: &mut [u8], mask: [u8; 4], offset: usize) {
        for (index, byte) in data.iter_mut().enumerate() {
            *byte ^= mask[(offset + index) % 4];
        }
    }

    #[test]
    fn matches_bytewise_reference_for_all_offsets_and_lengths() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for length in 0..40 {
            for offset in 0..40 {
                let original: Vec<u8> = (0..length).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = original.clone();
                let mut reference = original.clone();
                apply_mask(&mut fast, mask, offset);
                apply_mask_bytewise(&mut reference, mask, offset);
                assert_eq!(fast, reference, "length {length} offset {offset}");
            }
        }
    }

    #[test]
    fn unaligned_slices_match_reference() {
        // The chunks start wherever the caller's slice starts, not at an
        // aligned address: check every start within a word.
        let mask = [1, 2, 3, 4];
        let original: Vec<u8> = (0..64u8).collect();
        for start in 0..8 {
            let mut fast = original.clone();
            let mut reference = original.clone();
            apply_mask(&mut fast[start..], mask, 5);
            apply_mask_bytewise(&mut reference[start..], mask, 5);
            assert_eq!(fast, reference, "start {start}");
        }
    }

    #[test]
    fn split_unmasking_equals_whole() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let original: Vec<u8> = (0..37u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, mask, 0);
        for split in 0..=original.len() {
            let mut parts = original.clone();
            let (head, tail) = parts.split_at_mut(split);
            apply_mask(head, mask, 0);
            apply_mask(tail, mask, split);
            assert_eq!(parts, whole, "split {split}");
        }
    }

    #[test]
    fn masking_twice_restores_the_data() {
        let mask = [9, 8, 7, 6];
        let original: Vec<u8> = (0..100u8).collect();
        let mut data = original.clone();
        apply_mask(&mut data, mask, 3);
        assert_ne!(data, original);
        apply_mask(&mut data, mask, 3);
        assert_eq!(data, original);
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: a masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }
}
