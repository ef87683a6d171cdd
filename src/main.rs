//! The `mmsb` command-line program.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mmsb::Database;

mod cli;

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
    /// Interactive SQL shell (history, .tables, .schema, .mode, .timer, .help).
    Shell {
        /// The database file (created if missing).
        path: PathBuf,
    },
    /// Runs SQL scripts; stops at the first error with its file and line.
    Exec {
        /// The database file (created if missing).
        path: PathBuf,
        /// Script files, run in order.
        files: Vec<PathBuf>,
        /// SQL to run (before any files).
        #[arg(short = 'c', long = "command")]
        command: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: cli::Format,
        /// Keep going after a failing statement (the exit status still reports it).
        #[arg(long)]
        continue_on_error: bool,
        /// Run everything in one transaction, rolled back on error.
        #[arg(short = '1', long)]
        single_transaction: bool,
    },
    /// Verifies every checksum, the TLog, the trees and the free list of a
    /// closed database; exit status 0 clean, 1 damage found, 2 could not run.
    Check {
        /// The database file.
        path: PathBuf,
        /// Salvage every intact table and row into this new database.
        #[arg(long, value_name = "OUT")]
        repair: Option<PathBuf>,
        /// Report format.
        #[arg(long, value_enum, default_value = "text")]
        format: cli::check::ReportFormat,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { path } => demo(&path),
        Command::Stats { path } => stats(&path),
        Command::Shell { path } => return cli::shell(&path),
        Command::Check {
            path,
            repair,
            format,
        } => {
            return cli::check::run(&cli::check::CheckArgs {
                path,
                repair,
                format,
            })
        }
        Command::Exec {
            path,
            files,
            command,
            format,
            continue_on_error,
            single_transaction,
        } => {
            return cli::exec(cli::ExecArgs {
                path,
                files,
                command,
                format,
                continue_on_error,
                single_transaction,
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mmsb: {err}");
            ExitCode::FAILURE
        }
    }
}

const GREETINGS: [(&str, &str); 3] = [
    ("alice", "hello from mmsb"),
    ("bob", "deltas are the unit of change"),
    ("carol", "commits are durable when they return"),
];

fn demo(path: &std::path::Path) -> mmsb::Result<()> {
    {
        let db = Database::open(path)?;
        println!(
            "opened {} (last commit: {})",
            path.display(),
            db.last_commit()
        );
        for (name, text) in GREETINGS {
            let mut tx = db.begin_write()?;
            tx.open_table("greetings")?
                .insert(name.as_bytes(), text.as_bytes())?;
            let epoch = tx.commit()?;
            println!("committed {epoch}: greetings[{name:?}] = {text:?}");
        }
    }
    let db = Database::open(path)?;
    let metrics = db.metrics();
    println!(
        "reopened: recovered {} commits in {} us; last commit {}",
        metrics.recovered_commits,
        metrics.recovery_micros,
        db.last_commit()
    );
    let rx = db.begin_read()?;
    let greetings = rx.open_table("greetings")?;
    println!("greetings holds {} rows:", greetings.len());
    for entry in greetings.iter()? {
        let (name, text) = entry?;
        println!(
            "  {} => {}",
            String::from_utf8_lossy(&name),
            String::from_utf8_lossy(&text)
        );
    }
    drop(rx);
    sql_demo(db).map_err(|err| mmsb::Error::InvalidArgument(format!("SQL demo: {err}")))
}

/// A transactional SQL script through the same database: a transfer inside
/// BEGIN … COMMIT, then a query.
fn sql_demo(db: Database) -> Result<(), mmsb::QueryError> {
    let mut conn = mmsb::Connection::new(db)?;
    conn.execute(
        "CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL);
         INSERT INTO accounts SELECT 1, 'alice', 100 WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE id = 1);
         INSERT INTO accounts SELECT 2, 'bob', 50 WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE id = 2);
         BEGIN ISOLATION LEVEL SERIALIZABLE;
         UPDATE accounts SET balance = balance - 10 WHERE id = 1;
         UPDATE accounts SET balance = balance + 10 WHERE id = 2;
         COMMIT;",
    )?;
    println!("SQL: transferred 10 from alice to bob in one SERIALIZABLE transaction");
    let rows = conn.query("SELECT id, owner, balance FROM accounts ORDER BY id", &[])?;
    print!("{}", cli::output::table(&rows));
    Ok(())
}

fn stats(path: &std::path::Path) -> mmsb::Result<()> {
    if !path.exists() {
        return Err(mmsb::Error::InvalidArgument(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let db = Database::open(path)?;
    println!("{:#?}", db.metrics());
    Ok(())
}
