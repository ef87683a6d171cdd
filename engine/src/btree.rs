//! B+tree tables over pages. Filled in by the B+tree work.
