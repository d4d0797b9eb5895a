//! Pool metadata: chunk maps, the allocator, journal records, the state
//! machine that applies them, the checkpoint encoding, and the in-place
//! overwrites a commit journals coalesced. No IO here.

pub mod alloc;
pub mod checkpoint;
pub mod chunk_map;
pub(crate) mod overwrites;
pub mod record;
pub mod state;
