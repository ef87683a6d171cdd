//! mmsb: an embedded transactional storage engine.
#![deny(missing_docs)]
