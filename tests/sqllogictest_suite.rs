//! Runs every sqllogictest file in `tests/sql/` against a fresh in-memory
//! database (one per file; `connection NAME` records open further sessions
//! on the same database, for isolation tests).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmsb::storage::MemStorage;
use mmsb::{Connection, Database, Options, QueryError, Value};
use sqllogictest::{DBOutput, DefaultColumnType};

/// One SQL session as the sqllogictest runner sees it.
struct Session {
    conn: Connection,
}

/// Renders a value the way the `.slt` files expect it.
fn render(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Text(s) if s.is_empty() => "(empty)".into(),
        other => other.to_string(),
    }
}

impl sqllogictest::DB for Session {
    type Error = QueryError;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, QueryError> {
        let mut results = self.conn.execute(sql)?;
        let Some(last) = results.pop() else {
            return Ok(DBOutput::StatementComplete(0));
        };
        Ok(match last.rows {
            Some(rows) => DBOutput::Rows {
                types: vec![DefaultColumnType::Any; rows.columns().len()],
                rows: rows
                    .iter()
                    .map(|row| row.values().iter().map(render).collect())
                    .collect(),
            },
            None => DBOutput::StatementComplete(last.affected),
        })
    }

    fn engine_name(&self) -> &str {
        "mmsb"
    }

    fn error_sql_state(err: &QueryError) -> Option<String> {
        Some(err.sqlstate().to_owned())
    }
}

fn memory_db(name: &str) -> Database {
    let options = Options {
        storage: Arc::new(MemStorage::new()),
        checkpoint_on_close: false,
        ..Options::default()
    };
    match options.open(format!("/slt/{name}.mmsb")) {
        Ok(db) => db,
        Err(err) => panic!("cannot open an in-memory database: {err}"),
    }
}

fn run_file(path: &Path) -> Result<(), String> {
    let db = memory_db(&path.display().to_string().replace('/', "_"));
    let mut runner = sqllogictest::Runner::new(move || {
        let db = db.clone();
        async move { Connection::new(db).map(|conn| Session { conn }) }
    });
    runner.with_column_validator(|_, _| true);
    runner
        .run_file(path)
        .map_err(|e| format!("{}: {}", path.display(), e.display(false)))
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "slt"));
    files.sort();
    files
}

#[test]
fn sql_logic_tests_pass() {
    let files = slt_files();
    assert!(!files.is_empty(), "no .slt files in tests/sql");
    let failures: Vec<String> = files.iter().filter_map(|f| run_file(f).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
