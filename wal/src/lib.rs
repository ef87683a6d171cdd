//! mmsb's write-ahead TLog and everything it logs.
//!
//! - [`delta`]: the page delta, the unit that is logged, compressed, merged and replayed.
//! - [`storage`]: the storage seam every file access goes through (and its fault injection).
//!
//! This crate knows nothing of MVCC, tables, SQL or GPUs.
#![deny(missing_docs)]

pub mod delta;
mod error;
mod ids;
pub mod storage;

pub use delta::{Delta, DeltaError, DeltaRun};
pub use error::{Result, WalError};
pub use ids::{CommitEpoch, PageId};
pub mod codec;
pub mod record;
pub mod tlog;
pub use codec::{CodecConfig, CodecError, CodecMode};
pub use record::{CommitRecord, EncodeStats};
pub use tlog::{CommitTicket, Durability, Replay, TLog, TLogConfig, TLogStats};
pub mod manifest;
pub use manifest::{manifest_path, CheckpointManifest};
