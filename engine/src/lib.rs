//! mmsb's storage engine: page store, transactions, background workers, metrics.
#![deny(missing_docs)]

pub mod btree;
mod error;
pub mod merge;
pub mod page_access;

pub use error::{Error, Result};
