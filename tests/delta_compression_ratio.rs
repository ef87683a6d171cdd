//! The project's bar for delta compression: on a sparse-update workload the
//! TLog payload written with the adaptive codec is at least 3× smaller than
//! with uncompressed (raw) deltas.
//!
//! The workload (`support/sparse_workload.rs`, described there in full) is
//! an accounts table of 100-byte rows, 40 per 4 KiB page, with realistic
//! contents; each commit updates a balance, a login counter and timestamp,
//! or a timestamp in 100 random rows and bumps each row's version counter.
//! Deltas come from `Delta::from_diff(old_page, new_page)`, one per dirty
//! page in page id order, exactly as the engine builds them. The payload of
//! a commit is its encoded `CommitRecord`, all of it counted (record
//! header included; TLog frame headers are the same for both codecs and
//! left out).

#[path = "support/sparse_workload.rs"]
mod sparse_workload;

use mmsb_wal::codec::{CodecConfig, CodecMode};
use mmsb_wal::record::CommitRecord;
use sparse_workload::{SparseWorkload, PAGE_BYTES};

/// The project's bar: adaptive payloads at least this many times smaller than raw.
const REQUIRED_RATIO: f64 = 3.0;
/// Commits in the workload.
const COMMITS: usize = 300;
/// Seed of the workload.
const SEED: u64 = 0x5eed_2024;

/// Payload bytes of one commit kind under both codecs.
#[derive(Default)]
struct Totals {
    commits: usize,
    deltas: usize,
    changed_bytes: usize,
    raw: usize,
    adaptive: usize,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.commits += other.commits;
        self.deltas += other.deltas;
        self.changed_bytes += other.changed_bytes;
        self.raw += other.raw;
        self.adaptive += other.adaptive;
    }

    fn ratio(&self) -> f64 {
        self.raw as f64 / self.adaptive as f64
    }
}

/// Encodes one commit both ways, checks the adaptive payload decodes to
/// the same deltas, and returns the sizes.
fn measure(deltas: Vec<mmsb_wal::Delta>) -> Totals {
    let record = CommitRecord::new(deltas);
    let mut raw = Vec::new();
    let raw_stats = record
        .encode(&CodecConfig::with_mode(CodecMode::Raw), &mut raw)
        .expect("raw encoding");
    let mut adaptive = Vec::new();
    let stats = record
        .encode(&CodecConfig::default(), &mut adaptive)
        .expect("adaptive encoding");
    assert_eq!(raw_stats.encoded_bytes, raw.len());
    assert_eq!(stats.raw_bytes, raw.len());
    assert_eq!(stats.encoded_bytes, adaptive.len());
    let decoded = CommitRecord::decode(&adaptive, PAGE_BYTES).expect("adaptive payload decodes");
    assert_eq!(decoded, record, "adaptive payload must round-trip");
    Totals {
        commits: 1,
        deltas: record.deltas.len(),
        changed_bytes: stats.changed_bytes,
        raw: raw.len(),
        adaptive: adaptive.len(),
    }
}

#[test]
fn adaptive_tlog_payload_is_at_least_three_times_smaller_than_raw() {
    let mut workload = SparseWorkload::new(SEED);
    let mut by_kind: [Totals; 3] = Default::default();
    for commit in 0..COMMITS {
        let totals = measure(workload.next_commit());
        by_kind[commit % 3].add(&totals);
    }
    let mut all = Totals::default();
    for (name, totals) in ["deposit", "login", "touch"].iter().zip(&by_kind) {
        eprintln!(
            "{name:8} commits {:4} deltas {:6} changed {:7} B raw {:8} B adaptive {:7} B ratio {:.2}",
            totals.commits,
            totals.deltas,
            totals.changed_bytes,
            totals.raw,
            totals.adaptive,
            totals.ratio()
        );
        all.add(totals);
    }
    eprintln!(
        "all      raw {} B adaptive {} B ({:.1} B per delta) ratio {:.2}",
        all.raw,
        all.adaptive,
        all.adaptive as f64 / all.deltas as f64,
        all.ratio()
    );
    assert!(
        all.deltas > COMMITS * 50,
        "the workload must touch many pages"
    );
    assert!(
        all.ratio() >= REQUIRED_RATIO,
        "adaptive payload only {:.2}x smaller than raw (bar {REQUIRED_RATIO}x)",
        all.ratio()
    );
}

/// Smaller commits give the whole-record pass less to work with. Not the
/// project's bar, but a floor that catches regressions: even single-row
/// commits (one delta of two short runs) must come out at least 2× smaller.
#[test]
fn small_commits_still_compress() {
    const SMALL_COMMIT_FLOOR: f64 = 2.0;
    for (rows, commits) in [(1usize, 600usize), (10, 200), (30, 100)] {
        let mut workload = SparseWorkload::new(SEED ^ rows as u64);
        let mut totals = Totals::default();
        for _ in 0..commits {
            totals.add(&measure(workload.next_commit_of(rows)));
        }
        eprintln!(
            "{rows:3} rows per commit: raw {} B adaptive {} B ratio {:.2}",
            totals.raw,
            totals.adaptive,
            totals.ratio()
        );
        assert!(
            totals.ratio() >= SMALL_COMMIT_FLOOR,
            "{rows}-row commits only {:.2}x smaller than raw",
            totals.ratio()
        );
    }
}
