//! genrelab: a DAG engine of content-hashed stages (this crate's `src/`) and the science it runs (the
//! `genrelab-stages` crate in `stages/`).
//!
//! The engine never knows what a mel spectrogram is; a stage never knows where artifacts live. They meet in
//! the `genrelab-contract` crate (`contract/`), re-exported here as [`stage`]: the engine calls a
//! [`stage::StageKind`] with a [`stage::StageContext`]. The stages crate depends on the contract alone, so
//! the compiler, not a convention, keeps stage code away from the store, the lock and the CLI.

pub use genrelab_contract as stage;
pub use genrelab_stages as stages;

/// Build-time digests of each `stages/` folder's sources.
pub mod code {
    include!(concat!(env!("OUT_DIR"), "/stage_sources.rs"));
}

pub mod audit;
pub mod cas;
pub mod cli;
pub mod code_digest;
pub mod config;
pub mod dag;
pub mod efficiency;
pub mod engine;
pub mod exec;
pub mod family;
pub mod hashing;
pub mod inspect;
pub mod lock;
pub mod manifest;
pub mod rawinput;
pub mod reason;
pub mod remote;
pub mod slurm;
pub mod store;

/// glibc returns every freed block above its mmap threshold to the kernel at once, so a training step that
/// allocates and frees tensors of tens of megabytes spends over half its time in page faults. Keeping freed
/// memory in the heap (measured: a VGG step from 1.6 s to 0.9 s on 2 cores) changes no result bits.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tunables; call before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 1 << 30);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
