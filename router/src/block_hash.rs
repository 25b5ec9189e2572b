//! KV block hashes: the identity of a prompt prefix, shared by the frontend, the router's
//! index and the engines.
//!
//! A block's hash is XXH3-64 over the little-endian `u32` token ids of that full block, seeded
//! with the parent block's hash (0 for the first block), so equal hashes mean equal prefixes.
//! A trailing partial block is not hashed.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Hashes of the full `block_size`-token blocks of `tokens`, each chained to its parent.
pub fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    block_hashes_after(0, tokens, block_size)
}

/// Hashes of the full blocks of `tokens` that follow the block hashed `parent` (0: none), as
/// [`block_hashes`] would give them for the whole prefix; engines that report the token ids of
/// newly cached blocks are re-hashed this way.
pub fn block_hashes_after(parent: u64, tokens: &[u32], block_size: usize) -> Vec<u64> {
    if block_size == 0 {
        return Vec::new();
    }
    let mut bytes = Vec::with_capacity(block_size * 4);
    let mut parent = parent;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            bytes.clear();
            bytes.extend(block.iter().flat_map(|t| t.to_le_bytes()));
            parent = xxh3_64_with_seed(&bytes, parent);
            parent
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_prefixes_share_hashes_and_partial_blocks_are_skipped() {
        let a = block_hashes(&[1, 2, 3, 4, 5, 6, 7], 2);
        let b = block_hashes(&[1, 2, 3, 4, 9, 9], 2);
        assert_eq!(a.len(), 3);
        assert_eq!(b.len(), 3);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
    }

    #[test]
    fn hashes_after_a_parent_continue_the_chain() {
        let whole = block_hashes(&[1, 2, 3, 4, 5, 6], 2);
        assert_eq!(block_hashes_after(whole[0], &[3, 4, 5, 6], 2), whole[1..]);
    }

    #[test]
    fn a_block_hash_depends_on_its_parent() {
        let a = block_hashes(&[1, 2, 3, 4], 2);
        let b = block_hashes(&[9, 9, 3, 4], 2);
        assert_ne!(a[1], b[1]);
    }
}
