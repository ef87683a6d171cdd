//! mmsb's storage engine: page store, transactions, background workers, metrics.
#![deny(missing_docs)]
