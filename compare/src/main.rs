//! The `mmsb-compare` program: parses the command line and runs either the
//! whole comparison (parent) or one engine (child, `--child ENGINE`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mmsb_compare::harness::{run_child, run_parent, ParentOptions};
use mmsb_compare::{EngineKind, Result, WorkloadConfig};

/// Side-by-side KV benchmark of mmsb, redb, LMDB (heed), fjall and SQLite.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Entries of the bulk load (N); reads, range reads and removals scale with it.
    #[arg(long, env = "MMSB_COMPARE_ENTRIES", default_value_t = 1_000_000)]
    entries: usize,
    /// Engines to run, comma-separated, in column order.
    #[arg(
        long,
        env = "MMSB_COMPARE_ENGINES",
        default_value = "mmsb,redb,lmdb,fjall,sqlite"
    )]
    engines: String,
    /// Directory for the databases (must be on a real disk); default: the system temp dir.
    #[arg(long, env = "MMSB_COMPARE_DIR")]
    dir: Option<PathBuf>,
    /// Accept a --dir on tmpfs/ramfs (numbers then say nothing about fsync).
    #[arg(long)]
    allow_memory_fs: bool,
    /// Where <date>.md and <date>.json are written.
    #[arg(long, default_value = "compare/results")]
    results_dir: PathBuf,
    /// Where the SVG chart is written.
    #[arg(long, default_value = "docs/compare-kv.svg")]
    chart: PathBuf,
    /// Durable transactions of one insert each.
    #[arg(long, default_value_t = 1_000)]
    individual_writes: usize,
    /// Transactions of the batch-write phase.
    #[arg(long, default_value_t = 100)]
    batch_txs: usize,
    /// Inserts per batch transaction.
    #[arg(long, default_value_t = 1_000)]
    batch_len: usize,
    /// Threads of the multi-threaded read phase.
    #[arg(long, default_value_t = 2)]
    read_threads: usize,
    /// Runs of every engine (interleaved); the table shows medians.
    #[arg(long, env = "MMSB_COMPARE_RUNS", default_value_t = 3)]
    runs: usize,
    /// Transactions the removal of half the loaded keys is split into.
    #[arg(long, default_value_t = 1)]
    removal_txs: usize,
    /// Re-render a recorded run: read its JSON, write the chart, print the
    /// markdown results file (runs nothing).
    #[arg(long)]
    from_json: Option<PathBuf>,
    /// Internal: run one engine and print its JSON report.
    #[arg(long, hide = true)]
    child: Option<String>,
}

impl Args {
    fn workload(&self) -> WorkloadConfig {
        WorkloadConfig {
            entries: self.entries,
            individual_writes: self.individual_writes,
            batch_txs: self.batch_txs,
            batch_len: self.batch_len,
            read_threads: self.read_threads,
            removal_txs: self.removal_txs,
        }
    }

    fn bench_dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

fn run(args: Args) -> Result<()> {
    if let Some(engine) = &args.child {
        let kind = EngineKind::parse(engine)?;
        let run = run_child(kind, args.workload(), &args.bench_dir())?;
        let json = serde_json::to_string(&run)
            .map_err(|err| mmsb_compare::Error::Config(format!("serialising: {err}")))?;
        println!("{json}");
        return Ok(());
    }
    if let Some(path) = &args.from_json {
        return mmsb_compare::harness::rerender(path, &args.chart);
    }
    let command = std::env::var("MMSB_COMPARE_COMMAND")
        .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    let options = ParentOptions {
        workload: args.workload(),
        engines: EngineKind::parse_list(&args.engines)?,
        runs: args.runs,
        bench_dir: args.bench_dir(),
        allow_memory_fs: args.allow_memory_fs,
        results_dir: args.results_dir.clone(),
        chart: Some(args.chart.clone()),
        command,
    };
    let report = run_parent(&options)?;
    if report.engines.iter().any(|e| e.error.is_some()) {
        return Err(mmsb_compare::Error::Config(
            "at least one engine failed".into(),
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
