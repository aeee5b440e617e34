//! The KV block pool: which physical blocks are free, which sequences hold them, and (with
//! prefix caching) which full blocks hold the KV of which token prefix.
//!
//! A cached block is keyed by a hash chain over the whole prefix (`chain_hash(parent, tokens)`),
//! so a key names content, not a physical block: evicting a block can never make a stale
//! child reachable under a new parent. The block's own tokens and parent hash are kept and
//! compared on every hit, so only a collision of the 64-bit parent hash could alias, and it
//! would also need equal block tokens.
//!
//! Blocks nobody holds stay cached until their space is needed, least recently released first
//! (released in reverse order, so a sequence's tail goes before the prefix others share).

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

pub type BlockId = u32;

/// The hash a sequence's first block chains from.
pub const ROOT_HASH: u64 = 0x736d_656c_742d_6b76;

/// The key of a full block holding `tokens` after the prefix hashed as `parent`.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same prefix gets the same key in every run.
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Clone, Debug)]
struct CachedKey {
    hash: u64,
    parent: u64,
    tokens: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
struct Block {
    refs: u32,
    cached: Option<CachedKey>,
    /// Its key in `evictable` while it is cached and nobody holds it.
    released_at: Option<u64>,
}

/// Bookkeeping grows with the blocks in use, not with the pool: `blocks` holds only the
/// blocks handed out so far (ids `0..blocks.len()`), and a fresh id is taken only when no
/// released block is free, so a budget of millions of blocks costs nothing until used.
#[derive(Debug)]
pub struct BlockPool {
    block_tokens: usize,
    prefix_cache: bool,
    /// Blocks in the pool (at most `BlockId::MAX + 1`).
    capacity: usize,
    /// The blocks handed out at least once.
    blocks: Vec<Block>,
    /// Released blocks with nothing worth keeping.
    free: Vec<BlockId>,
    /// Unheld cached blocks by release time, the oldest first out.
    evictable: BTreeMap<u64, BlockId>,
    by_hash: HashMap<u64, BlockId>,
    clock: u64,
}

impl BlockPool {
    pub fn new(blocks: usize, block_tokens: usize, prefix_cache: bool) -> BlockPool {
        BlockPool {
            block_tokens,
            prefix_cache,
            // Ids are u32, as in the GPU's block tables.
            capacity: blocks.min(BlockId::MAX as usize + 1),
            blocks: Vec::new(),
            free: Vec::new(),
            evictable: BTreeMap::new(),
            by_hash: HashMap::new(),
            clock: 0,
        }
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    pub fn prefix_cache(&self) -> bool {
        self.prefix_cache
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks an allocation can get: never used, free, or cached with nobody holding them.
    pub fn available(&self) -> usize {
        self.capacity - self.blocks.len() + self.free.len() + self.evictable.len()
    }

    /// Blocks cached for reuse.
    pub fn cached(&self) -> usize {
        self.by_hash.len()
    }

    /// A block for one holder: a released free one, else one never used (the lowest id
    /// first), else the least recently released cached one.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.blocks.len() < self.capacity => {
                self.blocks.push(Block::default());
                (self.blocks.len() - 1) as BlockId
            }
            None => {
                let (_, id) = self.evictable.pop_first()?;
                let block = &mut self.blocks[id as usize];
                block.released_at = None;
                if let Some(key) = block.cached.take() {
                    self.by_hash.remove(&key.hash);
                }
                id
            }
        };
        self.blocks[id as usize].refs = 1;
        Some(id)
    }

    /// One more holder of a cached block (a prefix hit).
    pub fn acquire(&mut self, id: BlockId) {
        let block = &mut self.blocks[id as usize];
        if let Some(at) = block.released_at.take() {
            self.evictable.remove(&at);
        }
        block.refs += 1;
    }

    /// Drops one hold on each of `ids`, last first. A block nobody holds is kept for reuse if
    /// it is cached, else freed.
    pub fn release(&mut self, ids: &[BlockId]) {
        for &id in ids.iter().rev() {
            let block = &mut self.blocks[id as usize];
            debug_assert!(block.refs > 0, "block {id} released more often than held");
            block.refs -= 1;
            if block.refs > 0 {
                continue;
            }
            if block.cached.is_some() {
                self.clock += 1;
                block.released_at = Some(self.clock);
                self.evictable.insert(self.clock, id);
            } else {
                self.free.push(id);
            }
        }
    }

    /// The cached block holding `tokens` after the prefix `parent`, if any.
    pub fn lookup(&self, parent: u64, tokens: &[u32]) -> Option<BlockId> {
        let id = *self.by_hash.get(&chain_hash(parent, tokens))?;
        let key = self.blocks[id as usize].cached.as_ref()?;
        (key.parent == parent && key.tokens == tokens).then_some(id)
    }

    /// Offers held block `id`, now full of `tokens`' KV after prefix `parent`, to the cache.
    /// Returns false (and leaves it private) when prefix caching is off or the same content
    /// is already cached in another block.
    pub fn register(&mut self, id: BlockId, parent: u64, tokens: &[u32]) -> bool {
        debug_assert_eq!(tokens.len(), self.block_tokens);
        let hash = chain_hash(parent, tokens);
        if !self.prefix_cache || self.by_hash.contains_key(&hash) {
            return false;
        }
        let block = &mut self.blocks[id as usize];
        debug_assert!(block.refs > 0 && block.cached.is_none());
        block.cached = Some(CachedKey { hash, parent, tokens: tokens.to_vec() });
        self.by_hash.insert(hash, id);
        true
    }

    /// Holders of `id` (for tests and assertions).
    pub fn refs(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &mut BlockPool, parent: u64, tokens: &[u32]) -> BlockId {
        let id = pool.allocate().unwrap();
        pool.register(id, parent, tokens);
        id
    }

    #[test]
    fn allocation_runs_out_and_release_returns_blocks() {
        let mut pool = BlockPool::new(3, 4, false);
        let ids: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(pool.allocate(), None);
        pool.release(&ids);
        assert_eq!(pool.available(), 3);
        assert!(ids.iter().all(|&id| pool.refs(id) == 0));
    }

    #[test]
    fn a_released_cached_block_is_found_again_until_evicted() {
        let mut pool = BlockPool::new(2, 2, true);
        let a = filled(&mut pool, ROOT_HASH, &[1, 2]);
        pool.release(&[a]);
        assert_eq!(pool.lookup(ROOT_HASH, &[1, 2]), Some(a));
        assert_eq!(pool.lookup(ROOT_HASH, &[1, 3]), None);
        pool.acquire(a);
        assert_eq!(pool.refs(a), 1);
        pool.release(&[a]);
        // The free block goes first; the cached one is evicted only when nothing else is left.
        let b = pool.allocate().unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.lookup(ROOT_HASH, &[1, 2]), Some(a));
        let c = pool.allocate().unwrap();
        assert_eq!(c, a);
        assert_eq!(pool.lookup(ROOT_HASH, &[1, 2]), None);
        assert_eq!(pool.cached(), 0);
    }

    #[test]
    fn a_pool_reports_what_it_was_made_with_and_ids_fit_u32() {
        let pool = BlockPool::new(10, 16, false);
        assert_eq!((pool.block_tokens(), pool.prefix_cache(), pool.capacity(), pool.available()), (16, false, 10, 10));
        let pool = BlockPool::new(3, 4, true);
        assert_eq!((pool.block_tokens(), pool.prefix_cache(), pool.capacity()), (4, true, 3));
        // Block ids are u32 (the GPU's block tables): more blocks than that are not addressable.
        assert_eq!(BlockPool::new(usize::MAX, 16, true).capacity(), 1 << 32);
        // Different prefixes give different keys; the same prefix the same key.
        assert_ne!(chain_hash(ROOT_HASH, &[1, 2]), chain_hash(chain_hash(ROOT_HASH, &[9]), &[1, 2]));
        assert_eq!(chain_hash(ROOT_HASH, &[1, 2]), chain_hash(ROOT_HASH, &[1, 2]));
    }

    #[test]
    fn eviction_takes_the_least_recently_released_and_a_sequence_tail_first() {
        let mut pool = BlockPool::new(3, 1, true);
        let x = filled(&mut pool, ROOT_HASH, &[7]);
        let h0 = chain_hash(ROOT_HASH, &[1]);
        let (a0, a1) = (filled(&mut pool, ROOT_HASH, &[1]), pool.allocate().unwrap());
        pool.register(a1, h0, &[2]);
        pool.release(&[x]);
        pool.release(&[a0, a1]);
        // x was released first; then the sequence's tail a1 before its head a0.
        assert_eq!(pool.allocate(), Some(x));
        assert_eq!(pool.allocate(), Some(a1));
        assert_eq!(pool.lookup(ROOT_HASH, &[1]), Some(a0));
    }

    #[test]
    fn keys_chain_over_the_whole_prefix() {
        let mut pool = BlockPool::new(4, 2, true);
        let p = filled(&mut pool, ROOT_HASH, &[1, 2]);
        let child = pool.allocate().unwrap();
        pool.register(child, chain_hash(ROOT_HASH, &[1, 2]), &[3, 4]);
        // Same block tokens after another prefix: a miss.
        assert_eq!(pool.lookup(chain_hash(ROOT_HASH, &[9, 9]), &[3, 4]), None);
        assert_eq!(pool.lookup(chain_hash(ROOT_HASH, &[1, 2]), &[3, 4]), Some(child));
        // Evicting the parent and reusing its block for other tokens does not revive the child
        // under the new content.
        pool.release(&[p, child]);
        let reused = (0..4).map(|_| pool.allocate().unwrap()).find(|&id| id == p).unwrap();
        pool.register(reused, ROOT_HASH, &[5, 6]);
        assert_eq!(pool.lookup(chain_hash(ROOT_HASH, &[5, 6]), &[3, 4]), None);
    }

    /// A block found by its key's hash is checked against the whole key (prefix and tokens),
    /// so two contents whose hashes collide are never taken for each other. The collisions are
    /// forged: no 64-bit one can be found for a test.
    #[test]
    fn a_hash_collision_is_a_miss() {
        let mut pool = BlockPool::new(2, 2, true);
        let a = filled(&mut pool, ROOT_HASH, &[1, 2]);
        let other_prefix = chain_hash(ROOT_HASH, &[9, 9]);
        pool.by_hash.insert(chain_hash(ROOT_HASH, &[3, 4]), a);
        pool.by_hash.insert(chain_hash(other_prefix, &[1, 2]), a);
        assert_eq!(pool.lookup(ROOT_HASH, &[3, 4]), None, "same prefix, other tokens");
        assert_eq!(pool.lookup(other_prefix, &[1, 2]), None, "same tokens, other prefix");
        assert_eq!(pool.lookup(ROOT_HASH, &[1, 2]), Some(a));
    }

    #[test]
    fn duplicate_content_stays_private_and_caching_off_caches_nothing() {
        let mut pool = BlockPool::new(2, 1, true);
        let a = filled(&mut pool, ROOT_HASH, &[1]);
        let b = pool.allocate().unwrap();
        assert!(!pool.register(b, ROOT_HASH, &[1]));
        pool.release(&[b]);
        assert_eq!(pool.cached(), 1);
        assert_eq!(pool.lookup(ROOT_HASH, &[1]), Some(a));

        let mut off = BlockPool::new(1, 1, false);
        let c = off.allocate().unwrap();
        assert!(!off.register(c, ROOT_HASH, &[1]));
        assert_eq!(off.lookup(ROOT_HASH, &[1]), None);
    }
}
