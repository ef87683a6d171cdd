//! mmsb's fuzz targets, one plain function per target taking the fuzzer's
//! bytes. Each returns normally when the code under test answered with `Ok`
//! or a typed error, and panics on a bug (a panic inside mmsb, or a checked
//! property that does not hold). `fuzz/` runs them under libFuzzer
//! (cargo-fuzz); `tests/corpus_replays.rs` replays the kept corpora.
//!
//! Structured inputs are decoded from the bytes with `arbitrary`.
#![deny(missing_docs)]

use std::cell::Cell;

mod codec;
mod db_util;
mod manifest;
mod model;
mod open_db;
mod pages;
mod sql;
mod tlog;

pub use codec::{commit_record, delta_codecs};
pub use manifest::checkpoint_manifest;
pub use model::model_ops_with_crash;
pub use open_db::open_arbitrary_database;
pub use pages::sealed_page_and_btree_node;
pub use sql::sql_front_end;
pub use tlog::tlog_frames;

thread_local! {
    static SKIP_KNOWN_BUGS: Cell<bool> = const { Cell::new(cfg!(feature = "skip-known-bugs")) };
}

/// Whether the targets on this thread skip inputs that hit engine bugs
/// already found and reported but not fixed yet (fuzz/RESULTS.md lists
/// them). On by default with the `skip-known-bugs` feature (fuzz/ builds
/// with it, so a run goes on finding new bugs), off otherwise.
pub fn skip_known_bugs() -> bool {
    SKIP_KNOWN_BUGS.with(Cell::get)
}

/// Sets [`skip_known_bugs`] for this thread: the corpus replays (found with
/// the known bugs skipped) turn it on, the regression replays off.
pub fn set_skip_known_bugs(skip: bool) {
    SKIP_KNOWN_BUGS.with(|flag| flag.set(skip));
}

/// A fuzz target: takes the fuzzer's bytes, panics on a bug.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz/fuzz_targets/*.rs` and of the
/// corpus directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("tlog_frames", tlog_frames),
    ("delta_codecs", delta_codecs),
    ("commit_record", commit_record),
    ("sealed_page_and_btree_node", sealed_page_and_btree_node),
    ("checkpoint_manifest", checkpoint_manifest),
    ("open_arbitrary_database", open_arbitrary_database),
    ("sql_front_end", sql_front_end),
    ("model_ops_with_crash", model_ops_with_crash),
];
