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

pub mod cas;
pub mod cli;
pub mod code_digest;
pub mod config;
pub mod dag;
pub mod engine;
pub mod exec;
pub mod family;
pub mod hashing;
pub mod inspect;
pub mod lock;
pub mod manifest;
pub mod rawinput;
pub mod reason;
pub mod store;
