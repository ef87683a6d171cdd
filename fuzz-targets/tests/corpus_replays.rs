//! Replays the kept fuzz corpora (`fuzz/corpus/<target>/`) and the inputs of
//! past crashes (`fuzz/regressions/<target>/`) through their targets, so
//! that CI runs every input the fuzzers found without needing cargo-fuzz or
//! a nightly toolchain.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use mmsb_fuzz_targets::{Target, TARGETS};

/// The `fuzz/` directory of the repository.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Files directly inside `dir`, sorted (none if it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn target(name: &str) -> Target {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, target)) => *target,
        None => panic!("no fuzz target named {name}"),
    }
}

/// Prefix of a regression input whose bug is reported but not yet fixed
/// (outside the fuzz crates); such inputs run only in [`open_regressions`].
const OPEN_PREFIX: &str = "open-";

fn is_open(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with(OPEN_PREFIX))
}

/// Runs every file of `fuzz/<kind>/<name>/` (but the open regressions)
/// through the target; a panic names the input. Returns how many inputs ran.
fn replay(kind: &str, name: &str) -> usize {
    let files: Vec<PathBuf> = inputs(&fuzz_dir().join(kind).join(name))
        .into_iter()
        .filter(|path| !is_open(path))
        .collect();
    run_all(name, &files)
}

fn run_all(name: &str, files: &[PathBuf]) -> usize {
    let run = target(name);
    for file in files {
        let data = fs::read(file).unwrap_or_else(|err| panic!("read {}: {err}", file.display()));
        if let Err(cause) = panic::catch_unwind(AssertUnwindSafe(|| run(&data))) {
            eprintln!("fuzz input {} fails its target {name}", file.display());
            panic::resume_unwind(cause);
        }
    }
    files.len()
}

/// The inputs of bugs found by fuzzing, reported, and not fixed yet (their
/// fix belongs to code outside the fuzz crates): see fuzz/RESULTS.md. Run
/// with `cargo test -p mmsb-fuzz-targets -- --ignored` once the fix lands,
/// then drop the `open-` prefix from the file name.
#[test]
fn open_regressions() {
    mmsb_fuzz_targets::set_skip_known_bugs(false);
    for (name, _) in TARGETS {
        let files: Vec<PathBuf> = inputs(&fuzz_dir().join("regressions").join(name))
            .into_iter()
            .filter(|path| is_open(path))
            .collect();
        run_all(name, &files);
    }
}

macro_rules! replays {
    ($($name:ident),* $(,)?) => {
        mod corpus {
            $(
                #[test]
                fn $name() {
                    // The corpora were found with the known bugs skipped.
                    mmsb_fuzz_targets::set_skip_known_bugs(true);
                    let ran = super::replay("corpus", stringify!($name));
                    assert!(ran > 0, "no corpus kept for {}", stringify!($name));
                }
            )*
        }
        mod regressions {
            $(
                #[test]
                fn $name() {
                    mmsb_fuzz_targets::set_skip_known_bugs(false);
                    super::replay("regressions", stringify!($name));
                }
            )*
        }
    };
}

replays!(
    tlog_frames,
    delta_codecs,
    commit_record,
    sealed_page_and_btree_node,
    checkpoint_manifest,
    open_arbitrary_database,
    sql_front_end,
    model_ops_with_crash,
);

#[test]
fn every_target_has_a_replay_test() {
    // The macro above must list every target of the library.
    let listed = [
        "tlog_frames",
        "delta_codecs",
        "commit_record",
        "sealed_page_and_btree_node",
        "checkpoint_manifest",
        "open_arbitrary_database",
        "sql_front_end",
        "model_ops_with_crash",
    ];
    let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, listed);
    for name in names {
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
    }
}
