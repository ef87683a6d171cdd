//! Every engine adapter runs the whole workload at a small size: every phase
//! is reported, every check inside the workload (counts, value digests,
//! removals) passes, and sizes are measured from real files.

use mmsb_compare::{run_workload, Dataset, EngineKind, Measure, Phase, WorkloadConfig};

fn small() -> WorkloadConfig {
    WorkloadConfig {
        entries: 2_000,
        individual_writes: 5,
        batch_txs: 3,
        batch_len: 50,
        read_threads: 2,
        removal_txs: 2,
    }
}

fn run(kind: EngineKind) {
    let data = Dataset::generate(small()).expect("dataset");
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join(kind.name());
    std::fs::create_dir(&dir).expect("engine dir");
    let mut engine = kind.open(&dir).expect("open");
    assert_eq!(engine.name(), kind.name());
    let mut seen = Vec::new();
    let (results, compaction) =
        run_workload(engine.as_mut(), &data, &dir, &mut |r| seen.push(r.phase))
            .unwrap_or_else(|err| panic!("{}: {err}", kind.name()));
    assert!(!compaction.is_empty());
    assert_eq!(seen, Phase::ALL.to_vec());
    assert_eq!(
        results.iter().map(|r| r.phase).collect::<Vec<_>>(),
        Phase::ALL.to_vec()
    );
    for result in &results {
        match (result.phase.is_time(), result.measure) {
            (true, Measure::Millis(ms)) => assert!(ms >= 0.0),
            (false, Measure::Bytes { apparent, .. }) => {
                // 1 000 entries of 174 bytes are left: the files hold at least that.
                assert!(apparent > 100_000, "{}: {apparent} bytes", kind.name());
            }
            (_, other) => panic!("{:?} measured {other:?}", result.phase),
        }
    }
}

#[test]
fn mmsb_runs_the_workload() {
    run(EngineKind::Mmsb);
}

#[test]
fn redb_runs_the_workload() {
    run(EngineKind::Redb);
}

#[test]
fn lmdb_runs_the_workload() {
    run(EngineKind::Lmdb);
}

#[test]
fn fjall_runs_the_workload() {
    run(EngineKind::Fjall);
}

#[test]
fn sqlite_runs_the_workload() {
    run(EngineKind::Sqlite);
}
