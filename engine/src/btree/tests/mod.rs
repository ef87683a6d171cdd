//! Tests of the B+tree against an in-memory page store.

mod corrupt;
mod mem;
mod model;
mod unit;
