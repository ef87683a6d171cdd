//! The `mmsb` command-line program.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mmsb::{Database, PageId, PageRead, PageWrite};

/// mmsb: an embedded transactional storage engine.
#[derive(Parser, Debug)]
#[command(name = "mmsb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates (or opens) a database, commits a few writes, reopens it and
    /// prints what it reads back.
    Demo {
        /// The database file.
        path: PathBuf,
    },
    /// Prints the database's counters after opening (and recovering) it.
    Stats {
        /// The database file.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { path } => demo(&path),
        Command::Stats { path } => stats(&path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mmsb: {err}");
            ExitCode::FAILURE
        }
    }
}

const GREETINGS: [&str; 3] = ["hello from mmsb", "deltas are the unit of change", "commits are durable"];

fn demo(path: &std::path::Path) -> mmsb::Result<()> {
    let pages = {
        let db = Database::open(path)?;
        println!("opened {} (last commit: {})", path.display(), db.last_commit());
        let mut pages = Vec::new();
        for text in GREETINGS {
            let mut tx = db.begin_page_write()?;
            let page = tx.allocate_page()?;
            tx.write(page, 0, &(text.len() as u16).to_le_bytes())?;
            tx.write(page, 2, text.as_bytes())?;
            let epoch = tx.commit()?;
            println!("committed {epoch}: wrote {text:?} into {page}");
            pages.push(page);
        }
        pages
    };
    let db = Database::open(path)?;
    let metrics = db.metrics();
    println!(
        "reopened: recovered {} commits in {} us; last commit {}",
        metrics.recovered_commits,
        metrics.recovery_micros,
        db.last_commit()
    );
    let rx = db.begin_page_read()?;
    for page in pages {
        println!("read back from {page}: {:?}", read_text(&rx, page)?);
    }
    Ok(())
}

fn read_text(rx: &mmsb::PageReadTransaction, page: PageId) -> mmsb::Result<String> {
    let bytes = rx.read_page(page)?;
    let len = usize::from(u16::from_le_bytes([bytes[0], bytes[1]])).min(bytes.len() - 2);
    Ok(String::from_utf8_lossy(&bytes[2..2 + len]).into_owned())
}

fn stats(path: &std::path::Path) -> mmsb::Result<()> {
    if !path.exists() {
        return Err(mmsb::Error::InvalidArgument(format!("{} does not exist", path.display())));
    }
    let db = Database::open(path)?;
    println!("{:#?}", db.metrics());
    Ok(())
}
