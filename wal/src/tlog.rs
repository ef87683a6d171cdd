//! The TLog: segments, frames, group commit, replay. Filled in by the TLog work.
