//! The `mmsb check DB [--repair OUT] [--format text|json]` command: verifies a
//! closed database and prints every finding (stdout), with progress on
//! stderr for large files; `--repair OUT` then salvages every intact table
//! and row into the new database OUT and reports what was lost.
//!
//! Exit status: [`EXIT_CLEAN`] when nothing is damaged (and, with
//! `--repair`, nothing was lost), [`EXIT_DAMAGE`] when damage was found,
//! [`EXIT_FAILED`] when the check could not run.

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mmsb::{
    check_database, salvage, CheckOptions, CheckPhase, CheckProgress, CheckReport, Finding,
    LostRange, SalvageOptions, SalvageReport,
};

/// Exit status: no damage found.
pub const EXIT_CLEAN: u8 = 0;
/// Exit status: damage found (or, with `--repair`, something was lost).
pub const EXIT_DAMAGE: u8 = 1;
/// Exit status: the check could not run (missing file, database in use, I/O error).
pub const EXIT_FAILED: u8 = 2;
/// Least time between two progress lines on stderr.
const PROGRESS_INTERVAL_MS: u64 = 1000;

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Lines for people.
    Text,
    /// One JSON object.
    Json,
}

/// What `mmsb check` was asked to do.
#[derive(Debug, Clone)]
pub struct CheckArgs {
    /// The database to check.
    pub path: PathBuf,
    /// Where to salvage into (`--repair OUT`).
    pub repair: Option<PathBuf>,
    /// Report format.
    pub format: ReportFormat,
}

/// Runs `mmsb check`.
pub fn run(args: &CheckArgs) -> ExitCode {
    let path = absolute(&args.path);
    let printer = ProgressPrinter::new();
    let report_progress = |p: CheckProgress| printer.report(p);
    let options = CheckOptions {
        progress: Some(&report_progress),
        ..CheckOptions::default()
    };
    let report = match check_database(&path, &options) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("mmsb: cannot check {}: {err}", path.display());
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let salvaged = match &args.repair {
        None => None,
        Some(out) => match salvage(&path, absolute(out), &SalvageOptions::default()) {
            Ok(salvaged) => Some(salvaged),
            Err(err) => {
                print_report(&report, None, args.format);
                eprintln!("mmsb: cannot salvage {}: {err}", path.display());
                return ExitCode::from(EXIT_FAILED);
            }
        },
    };
    print_report(&report, salvaged.as_ref(), args.format);
    let lost = salvaged.as_ref().is_some_and(|s| !s.is_complete());
    if report.is_clean() && !lost {
        ExitCode::from(EXIT_CLEAN)
    } else {
        ExitCode::from(EXIT_DAMAGE)
    }
}

fn absolute(path: &Path) -> PathBuf {
    match std::env::current_dir() {
        Ok(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

fn print_report(report: &CheckReport, salvaged: Option<&SalvageReport>, format: ReportFormat) {
    let text = match format {
        ReportFormat::Text => text_report(report, salvaged),
        ReportFormat::Json => json_report(report, salvaged),
    };
    print!("{text}");
}

/// Prints `pages done/total` lines on stderr, at most one per interval and
/// none during the first interval (small files print nothing).
struct ProgressPrinter {
    last: Cell<Instant>,
}

impl ProgressPrinter {
    fn new() -> Self {
        ProgressPrinter {
            last: Cell::new(Instant::now()),
        }
    }

    fn report(&self, progress: CheckProgress) {
        if self.last.get().elapsed() < Duration::from_millis(PROGRESS_INTERVAL_MS) {
            return;
        }
        self.last.set(Instant::now());
        let (what, unit) = match progress.phase {
            CheckPhase::Pages => ("verifying pages", "pages"),
            CheckPhase::TLog => ("reading the TLog", "bytes"),
            CheckPhase::Trees => ("checking trees", "tables"),
        };
        eprintln!("{what}: {}/{} {unit}", progress.done, progress.total);
    }
}

/// The report for people.
pub fn text_report(report: &CheckReport, salvaged: Option<&SalvageReport>) -> String {
    let s = &report.summary;
    let mut out = String::new();
    let _ = writeln!(out, "mmsb check {}", report.path.display());
    let _ = writeln!(
        out,
        "  checkpoint: {} pages of {} bytes at {}; {} verified, {} damaged; manifest {}",
        s.checkpoint_pages,
        s.page_size,
        s.checkpoint_epoch,
        s.pages_verified,
        s.pages_damaged,
        if s.manifest_verified {
            "verified"
        } else {
            "absent or unusable"
        }
    );
    let _ = writeln!(
        out,
        "  tlog: {} segments, {} frames, replayed through {}, torn tail {} bytes",
        s.tlog_segments, s.tlog_frames, s.last_epoch, s.tlog_torn_bytes
    );
    let _ = writeln!(
        out,
        "  tables: {} ({} entries); {} pages: {} in trees, {} free, {} leaked",
        s.tables, s.entries, s.page_count, s.tree_pages, s.free_pages, s.leaked_pages
    );
    for finding in &report.findings {
        let _ = writeln!(out, "  {finding}");
    }
    let verdict = if report.is_clean() {
        "clean"
    } else {
        "DAMAGED"
    };
    let _ = writeln!(
        out,
        "result: {verdict} ({} errors, {} warnings)",
        s.errors, s.warnings
    );
    if let Some(salvaged) = salvaged {
        salvage_text(&mut out, salvaged);
    }
    out
}

fn salvage_text(out: &mut String, salvaged: &SalvageReport) {
    let _ = writeln!(
        out,
        "salvage into {} (source read through {}):",
        salvaged.output.display(),
        salvaged.last_epoch
    );
    if salvaged.meta_lost {
        let _ = writeln!(out, "  the meta page is lost: no table could be found");
    }
    for lost in &salvaged.catalog_lost {
        let _ = writeln!(
            out,
            "  catalog {}: tables named in it are lost",
            range_text(lost)
        );
    }
    for table in &salvaged.tables {
        let state = if table.is_complete() {
            "complete"
        } else {
            "INCOMPLETE"
        };
        let _ = writeln!(
            out,
            "  table {:?}: {}/{} rows copied, {} lost, {state}",
            table.name,
            table.rows_copied,
            table.rows_expected,
            table.rows_lost()
        );
        for lost in &table.pages_lost {
            let _ = writeln!(out, "    lost {}", range_text(lost));
        }
    }
    if let Some(check) = &salvaged.output_check {
        let verdict = if check.is_clean() { "clean" } else { "DAMAGED" };
        let _ = writeln!(out, "  output check: {verdict}");
    }
    let verdict = if salvaged.is_complete() {
        "nothing lost"
    } else {
        "DATA LOST"
    };
    let _ = writeln!(
        out,
        "salvage result: {verdict} ({} rows copied, {} rows lost)",
        salvaged.rows_copied(),
        salvaged.rows_lost()
    );
}

/// A key as people read it: a quoted string when it is printable ASCII,
/// else `0x` and its bytes in hex.
fn key_text(key: &[u8]) -> String {
    if key.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(key))
    } else {
        let mut hex = String::from("0x");
        for b in key {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }
}

fn range_text(lost: &LostRange) -> String {
    let bound = |key: &Option<Vec<u8>>| key.as_deref().map_or("..".to_string(), key_text);
    format!(
        "{} (keys {} to {}): {}",
        lost.page,
        bound(&lost.from),
        bound(&lost.to),
        lost.reason
    )
}

/// The report as one JSON object.
pub fn json_report(report: &CheckReport, salvaged: Option<&SalvageReport>) -> String {
    let s = &report.summary;
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"path\":{},\"clean\":{},\"summary\":{{\"page_size\":{},\"checkpoint_pages\":{},\
         \"page_count\":{},\"checkpoint_epoch\":{},\"last_epoch\":{},\"pages_verified\":{},\
         \"pages_damaged\":{},\"manifest_verified\":{},\"tlog_segments\":{},\"tlog_frames\":{},\
         \"tlog_torn_bytes\":{},\"tables\":{},\"entries\":{},\"tree_pages\":{},\"free_pages\":{},\
         \"leaked_pages\":{},\"errors\":{},\"warnings\":{}}},\"findings\":[",
        json_str(&report.path.display().to_string()),
        report.is_clean(),
        s.page_size,
        s.checkpoint_pages,
        s.page_count,
        s.checkpoint_epoch.get(),
        s.last_epoch.get(),
        s.pages_verified,
        s.pages_damaged,
        s.manifest_verified,
        s.tlog_segments,
        s.tlog_frames,
        s.tlog_torn_bytes,
        s.tables,
        s.entries,
        s.tree_pages,
        s.free_pages,
        s.leaked_pages,
        s.errors,
        s.warnings
    );
    for (i, finding) in report.findings.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&finding_json(finding));
    }
    out.push(']');
    if let Some(salvaged) = salvaged {
        let _ = write!(out, ",\"salvage\":{}", salvage_json(salvaged));
    }
    out.push_str("}\n");
    out
}

fn finding_json(finding: &Finding) -> String {
    let loc = &finding.location;
    format!(
        "{{\"severity\":\"{}\",\"area\":\"{}\",\"file\":{},\"page\":{},\"offset\":{},\"table\":{},\"message\":{}}}",
        finding.severity,
        finding.area.name(),
        json_str(&loc.file.display().to_string()),
        json_opt(loc.page.map(|p| p.get())),
        json_opt(loc.offset),
        loc.table.as_deref().map_or("null".to_string(), json_str),
        json_str(&finding.message)
    )
}

fn salvage_json(salvaged: &SalvageReport) -> String {
    let ranges = |lost: &[LostRange]| {
        let items: Vec<String> = lost
            .iter()
            .map(|l| {
                let key = |k: &Option<Vec<u8>>| {
                    k.as_deref()
                        .map_or("null".to_string(), |k| json_str(&key_text(k)))
                };
                format!(
                    "{{\"page\":{},\"from\":{},\"to\":{},\"reason\":{}}}",
                    l.page.get(),
                    key(&l.from),
                    key(&l.to),
                    json_str(&l.reason)
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    };
    let tables: Vec<String> = salvaged
        .tables
        .iter()
        .map(|t| {
            format!(
                "{{\"name\":{},\"rows_expected\":{},\"rows_copied\":{},\"complete\":{},\"pages_lost\":{}}}",
                json_str(&t.name),
                t.rows_expected,
                t.rows_copied,
                t.is_complete(),
                ranges(&t.pages_lost)
            )
        })
        .collect();
    format!(
        "{{\"output\":{},\"complete\":{},\"meta_lost\":{},\"rows_copied\":{},\"rows_lost\":{},\
         \"catalog_lost\":{},\"tables\":[{}],\"output_clean\":{}}}",
        json_str(&salvaged.output.display().to_string()),
        salvaged.is_complete(),
        salvaged.meta_lost,
        salvaged.rows_copied(),
        salvaged.rows_lost(),
        ranges(&salvaged.catalog_lost),
        tables.join(","),
        salvaged
            .output_check
            .as_ref()
            .map_or("null".to_string(), |c| c.is_clean().to_string())
    )
}

fn json_opt(value: Option<u64>) -> String {
    value.map_or("null".to_string(), |v| v.to_string())
}

/// A JSON string literal.
fn json_str(text: &str) -> String {
    super::output::json_string(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn keys_print_as_text_or_hex() {
        assert_eq!(key_text(b"alice 1"), "\"alice 1\"");
        assert_eq!(key_text(&[0x20, 0x80, 0]), "0x208000");
    }

    #[test]
    fn a_missing_database_cannot_be_checked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let args = CheckArgs {
            path: dir.path().join("nope.mmsb"),
            repair: None,
            format: ReportFormat::Text,
        };
        assert_eq!(run(&args), ExitCode::from(EXIT_FAILED));
    }
}
