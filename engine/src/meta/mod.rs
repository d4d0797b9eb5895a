//! Pool metadata: chunk maps, the allocator, journal records, the state
//! machine that applies them, and the checkpoint encoding. No IO here.

pub mod alloc;
pub mod checkpoint;
pub mod chunk_map;
pub mod record;
pub mod state;
