//! The `mmsb shell` and `mmsb exec` commands: an interactive SQL shell
//! (line editing, history, dot-commands) and a script runner that stops at
//! the first error with its file, line and message.

pub mod check;
pub mod output;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use mmsb::{Connection, Database};
pub use output::Format;

/// File in the home directory that keeps the shell's history.
const HISTORY_FILE: &str = ".mmsb_history";

fn open(path: &Path) -> Result<Connection, String> {
    // The engine syncs the file's directory: give it an absolute path.
    let path = match std::env::current_dir() {
        Ok(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    };
    let path = path.as_path();
    let db = Database::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Connection::new(db).map_err(|e| format!("cannot start a session on {}: {e}", path.display()))
}

/// What `mmsb exec` runs.
#[derive(Debug)]
pub struct ExecArgs {
    /// The database file.
    pub path: PathBuf,
    /// Script files, run in order.
    pub files: Vec<PathBuf>,
    /// SQL given on the command line (`-c`).
    pub command: Option<String>,
    /// Output format.
    pub format: Format,
    /// Keep going after a failing statement.
    pub continue_on_error: bool,
    /// Wrap everything in one transaction (rolled back on error).
    pub single_transaction: bool,
}

/// Runs `mmsb exec`.
pub fn exec(args: ExecArgs) -> ExitCode {
    let mut conn = match open(&args.path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mmsb: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut scripts: Vec<(String, String)> = Vec::new();
    if let Some(sql) = &args.command {
        scripts.push(("-c".into(), sql.clone()));
    }
    for file in &args.files {
        match std::fs::read_to_string(file) {
            Ok(text) => scripts.push((file.display().to_string(), text)),
            Err(e) => {
                eprintln!("mmsb: cannot read {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if scripts.is_empty() {
        eprintln!("mmsb: nothing to run: give script files or -c SQL");
        return ExitCode::FAILURE;
    }
    if args.single_transaction {
        if let Err(e) = conn.execute("BEGIN") {
            eprintln!("mmsb: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut failed = false;
    let stdout = std::io::stdout();
    'scripts: for (name, text) in &scripts {
        let statements = match mmsb::parse_script(text) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: {e}");
                failed = true;
                if args.continue_on_error {
                    continue;
                }
                break;
            }
        };
        for statement in statements {
            match conn.run(&statement.statement, &[]) {
                Ok(result) => {
                    let mut out = stdout.lock();
                    let _ = out.write_all(output::render(&result, args.format).as_bytes());
                }
                Err(e) => {
                    eprintln!("{name}:{}: error: {e}", statement.line);
                    failed = true;
                    if !args.continue_on_error {
                        break 'scripts;
                    }
                }
            }
        }
    }
    if args.single_transaction {
        let end = if failed { "ROLLBACK" } else { "COMMIT" };
        if let Err(e) = conn.execute(end) {
            eprintln!("mmsb: {end}: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

const HELP: &str = "\
Enter SQL statements terminated by ';'. Dot-commands:
  .tables              list tables
  .schema [TABLE]      show CREATE statements
  .mode table|csv|json set the output format
  .timer on|off        show how long each statement took
  .help                this text
  .quit / .exit        leave (Ctrl-D too)
";

/// The interactive shell's state.
struct Shell {
    conn: Connection,
    format: Format,
    timer: bool,
}

impl Shell {
    fn prompt(&self, continuation: bool) -> &'static str {
        match (
            continuation,
            self.conn.transaction_failed(),
            self.conn.in_transaction(),
        ) {
            (true, _, _) => "   ...> ",
            (false, true, _) => "mmsb!> ",
            (false, false, true) => "mmsb*> ",
            (false, false, false) => "mmsb> ",
        }
    }

    /// Runs a dot-command; returns false to quit.
    fn dot_command(&mut self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let arg = words.next();
        match command {
            ".quit" | ".exit" => return false,
            ".help" => print!("{HELP}"),
            ".tables" => match self.conn.tables() {
                Ok(tables) => {
                    for t in tables {
                        println!("{}", t.name);
                    }
                }
                Err(e) => eprintln!("Error: {e}"),
            },
            ".schema" => match self.conn.tables() {
                Ok(tables) => {
                    for t in tables.iter().filter(|t| arg.is_none_or(|a| a == t.name)) {
                        println!("{}", t.to_sql());
                    }
                }
                Err(e) => eprintln!("Error: {e}"),
            },
            ".mode" => match arg.and_then(Format::parse) {
                Some(f) => self.format = f,
                None => eprintln!("Error: .mode table|csv|json"),
            },
            ".timer" => match arg {
                Some("on") => self.timer = true,
                Some("off") => self.timer = false,
                _ => eprintln!("Error: .timer on|off"),
            },
            other => eprintln!("Error: unknown command {other}; try .help"),
        }
        true
    }

    fn run_sql(&mut self, sql: &str) {
        let statements = match mmsb::parse_script(sql) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("Error: {e}");
                return;
            }
        };
        for statement in statements {
            let started = Instant::now();
            match self.conn.run(&statement.statement, &[]) {
                Ok(result) => print!("{}", output::render(&result, self.format)),
                Err(e) => {
                    eprintln!("Error: {e}");
                    if !self.conn.in_transaction() || self.conn.transaction_failed() {
                        break;
                    }
                }
            }
            if self.timer {
                println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
}

/// Whether the buffer holds complete statements (ends with `;` outside quotes).
fn complete(buffer: &str) -> bool {
    let mut in_single = false;
    let mut in_double = false;
    let mut last = None;
    for c in buffer.chars() {
        match c {
            '\'' if !in_double => in_single = !in_single,
            '"' if !in_single => in_double = !in_double,
            _ => {}
        }
        if !c.is_whitespace() {
            last = Some(c);
        }
    }
    !in_single && !in_double && last == Some(';')
}

/// Runs `mmsb shell`.
pub fn shell(path: &Path) -> ExitCode {
    let conn = match open(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mmsb: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mmsb: cannot start the line editor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE));
    if let Some(h) = &history {
        // A missing history file is normal on first use.
        let _ = editor.load_history(h);
    }
    println!("mmsb shell on {}. Enter .help for help.", path.display());
    let mut shell = Shell {
        conn,
        format: Format::Table,
        timer: false,
    };
    let mut buffer = String::new();
    loop {
        let line = match editor.readline(shell.prompt(!buffer.is_empty())) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("mmsb: {e}");
                return ExitCode::FAILURE;
            }
        };
        if buffer.is_empty() && line.trim_start().starts_with('.') {
            let _ = editor.add_history_entry(line.as_str());
            if !shell.dot_command(line.trim()) {
                break;
            }
            continue;
        }
        if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(&line);
        if complete(&buffer) {
            let _ = editor.add_history_entry(buffer.as_str());
            let sql = std::mem::take(&mut buffer);
            shell.run_sql(&sql);
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(path: &Path, script: &Path) -> ExecArgs {
        ExecArgs {
            path: path.to_path_buf(),
            files: vec![script.to_path_buf()],
            command: None,
            format: Format::Csv,
            continue_on_error: false,
            single_transaction: false,
        }
    }

    fn count(path: &Path, sql: &str) -> i64 {
        let mut conn = open(path).unwrap_or_else(|e| panic!("{e}"));
        conn.query(sql, &[]).and_then(|r| r.scalar()).unwrap_or(-1)
    }

    #[test]
    fn exec_stops_at_the_first_error_and_fails() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = dir.path().join("x.mmsb");
        let script = dir.path().join("s.sql");
        let text = "CREATE TABLE t (a INTEGER);\nINSERT INTO t VALUES (1);\nINSERT INTO nope VALUES (2);\nINSERT INTO t VALUES (3);\n";
        std::fs::write(&script, text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exec(args(&db, &script)), ExitCode::FAILURE);
        assert_eq!(
            count(&db, "SELECT count(*) FROM t"),
            1,
            "statements before the error ran, none after"
        );

        let mut keep_going = args(&db, &script);
        keep_going.continue_on_error = true;
        std::fs::write(
            &script,
            "INSERT INTO nope VALUES (1);\nINSERT INTO t VALUES (5);",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exec(keep_going), ExitCode::FAILURE);
        assert_eq!(count(&db, "SELECT count(*) FROM t"), 2);

        let mut atomic = args(&db, &script);
        atomic.single_transaction = true;
        std::fs::write(&script, "INSERT INTO t VALUES (6);\nSELECT 1/0;")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exec(atomic), ExitCode::FAILURE);
        assert_eq!(
            count(&db, "SELECT count(*) FROM t"),
            2,
            "the single transaction rolled back"
        );

        std::fs::write(&script, "INSERT INTO t VALUES (7); SELECT * FROM t;")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exec(args(&db, &script)), ExitCode::SUCCESS);
        assert_eq!(count(&db, "SELECT count(*) FROM t"), 3);
    }

    #[test]
    fn statements_end_at_a_semicolon_outside_quotes() {
        assert!(complete("SELECT 1;"));
        assert!(complete("SELECT 1;  "));
        assert!(!complete("SELECT 1"));
        assert!(!complete("SELECT ';"));
        assert!(complete("SELECT ';';"));
    }
}
