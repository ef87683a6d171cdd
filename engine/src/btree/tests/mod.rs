//! Tests of the B+tree against an in-memory page store.

mod batch;
mod corrupt;
pub(super) mod mem;
mod model;
mod unit;
