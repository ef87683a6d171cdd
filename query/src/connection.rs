//! A SQL session: [`Connection`] runs statements with PostgreSQL's
//! transaction behaviour. Outside BEGIN each statement is its own
//! transaction (autocommit, retried on a serialization failure since nothing
//! was returned yet); inside, statements share one engine transaction whose
//! snapshot is taken by the first statement, every statement is atomic (an
//! engine savepoint each), and an error aborts the transaction until
//! ROLLBACK (or ROLLBACK TO a savepoint).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mmsb_engine::{Database, IsolationLevel, Savepoint, TableHandle, Transaction};
use sqlparser::ast::{self, Statement as Ast};

use crate::bind::{statement_kind, Binder};
use crate::catalog::{load_table_bytes, SCHEMA_TABLE};
use crate::ddl;
use crate::error::{QueryError, Result};
use crate::exec::{run_delete, run_insert, run_select, run_update, with_subqueries, RowSet};
use crate::parse::{parse_one, parse_script, ParsedStatement};
use crate::plan::{explain, Plan};
use crate::rows::{Rows, StatementResult};
use crate::value::{ToSql, Value};

/// How often an autocommit statement is retried after a serialization failure.
pub const MAX_AUTOCOMMIT_RETRIES: u32 = 32;

/// An explicit transaction (BEGIN ... COMMIT).
struct Explicit {
    /// Started by the first statement that needs it.
    tx: Option<Transaction>,
    isolation: IsolationLevel,
    read_only: bool,
    savepoints: Vec<(String, Savepoint)>,
    /// An error happened: only ROLLBACK (TO) is accepted.
    failed: bool,
    /// Plans of prepared statements already checked against this
    /// transaction's schema (REPEATABLE READ and SERIALIZABLE only: their
    /// snapshot cannot see another session's DDL). Cleared by DDL and
    /// ROLLBACK TO.
    checked_plans: PlanMemo,
    /// The data table the last direct insert wrote, resolved once for the
    /// statements after it (the engine re-resolves it by name after DDL or
    /// ROLLBACK TO, so it is never stale).
    direct_table: Option<TableHandle>,
}

impl Explicit {
    /// The shortcut of a prepared one-row INSERT whose plan this
    /// transaction already checked and compiled to a direct insert
    /// ([`crate::exec::DirectInsert`]): it runs that insert with no
    /// per-statement dispatch. Taken only where the general path would run
    /// the same plan the same way (`run_data` then `run_unguarded`): the
    /// transaction is started, not failed, not READ ONLY, has no SAVEPOINT
    /// (so the statement runs unguarded and an error marks it failed, as
    /// there), the plan is in this transaction's memo (REPEATABLE READ and
    /// SERIALIZABLE; cleared by DDL and ROLLBACK TO), has no subqueries and
    /// takes exactly `params.len()` parameters. `None`: take the general
    /// path, which handles (and reports) everything else.
    #[inline]
    fn direct_insert(
        &mut self,
        cache: &PlanCache,
        params: &[Value],
    ) -> Option<Result<StatementResult>> {
        if self.failed || self.read_only || !self.savepoints.is_empty() {
            return None;
        }
        let tx = self.tx.as_mut()?;
        let cached = self.checked_plans.get(&cache.id())?;
        let Plan::Insert(insert) = &*cached.plan else {
            return None;
        };
        let direct = insert.direct.as_ref()?;
        if cached.params != params.len() || !cached.subqueries.is_empty() {
            return None;
        }
        let result = direct.run_with_handle(
            tx,
            &insert.table,
            &insert.data_table,
            params,
            &mut self.direct_table,
        );
        self.failed = result.is_err();
        Some(result.map(|n| rows_result("INSERT", n, None)))
    }
}

/// Hashes a plan cache's identity (an address) with one multiply: the
/// memo is looked up once per prepared statement run, and SipHash cost
/// more than the rest of that lookup. Addresses come from this process.
#[derive(Debug, Default, Clone, Copy)]
struct PlanIdHasher(u64);

impl std::hash::Hasher for PlanIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, id: usize) {
        // The high half folded down: aligned addresses differ in high bits.
        let product = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = product ^ (product >> 32);
    }
}

/// Plans checked in one explicit transaction, by plan cache identity.
type PlanMemo = HashMap<usize, Arc<CachedPlan>, std::hash::BuildHasherDefault<PlanIdHasher>>;

/// A plan bound once and reused while the schemas it was bound against
/// are unchanged.
#[derive(Debug)]
struct CachedPlan {
    plan: Arc<Plan>,
    /// Uncorrelated subqueries the plan refers to.
    subqueries: Vec<crate::plan::SelectPlan>,
    params: usize,
    dependencies: Vec<(String, Vec<u8>)>,
}

/// A prepared statement's plan cache.
#[derive(Debug, Default)]
struct PlanCache {
    slot: Mutex<Option<Arc<CachedPlan>>>,
}

impl PlanCache {
    /// Identity of the cache (shared by clones of one `Statement`).
    fn id(&self) -> usize {
        self as *const PlanCache as usize
    }

    /// The cached plan, if every schema it depends on is unchanged in `tx`.
    fn lookup(&self, tx: &mut Transaction) -> Result<Option<Arc<CachedPlan>>> {
        let cached = match self.slot.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(cached) = cached else {
            return Ok(None);
        };
        for (name, bytes) in &cached.dependencies {
            if load_table_bytes(tx, name)?.as_deref() != Some(bytes.as_slice()) {
                return Ok(None);
            }
        }
        Ok(Some(cached))
    }

    fn store(&self, plan: Arc<CachedPlan>) {
        let mut slot = match self.slot.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Some(plan);
    }
}

/// A prepared statement: parsed once, bound on first use and re-bound only
/// when a table it reads changed its schema; run with `$1, $2, ...`.
#[derive(Debug, Clone)]
pub struct Statement {
    parsed: Arc<ParsedStatement>,
    cache: Arc<PlanCache>,
}

impl Statement {
    /// The statement's SQL text.
    pub fn sql(&self) -> &str {
        &self.parsed.text
    }

    /// Runs it on `conn`.
    pub fn execute(&self, conn: &mut Connection, params: &[&dyn ToSql]) -> Result<StatementResult> {
        conn.execute_prepared(self, params)
    }

    /// Runs it on `conn` and returns its rows.
    pub fn query(&self, conn: &mut Connection, params: &[&dyn ToSql]) -> Result<Rows> {
        Ok(conn
            .execute_prepared(self, params)?
            .rows
            .unwrap_or_default())
    }
}

/// A SQL session on a database. Any number may exist, on any threads.
pub struct Connection {
    db: Database,
    explicit: Option<Explicit>,
    default_isolation: IsolationLevel,
    /// The parameter list of the last prepared-statement run, kept for its
    /// allocation (empty between runs).
    param_scratch: Vec<Value>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("in_transaction", &self.explicit.is_some())
            .field("default_isolation", &self.default_isolation)
            .finish()
    }
}

fn isolation_of(level: &ast::TransactionIsolationLevel) -> Result<IsolationLevel> {
    use ast::TransactionIsolationLevel as L;
    Ok(match level {
        // PostgreSQL runs READ UNCOMMITTED as READ COMMITTED.
        L::ReadUncommitted | L::ReadCommitted => IsolationLevel::ReadCommitted,
        L::RepeatableRead => IsolationLevel::RepeatableRead,
        L::Serializable => IsolationLevel::Serializable,
        L::Snapshot => return Err(QueryError::not_supported("ISOLATION LEVEL SNAPSHOT")),
    })
}

/// Applies transaction modes; returns (isolation, read only) changes.
fn modes(list: &[ast::TransactionMode]) -> Result<(Option<IsolationLevel>, Option<bool>)> {
    let mut isolation = None;
    let mut read_only = None;
    for mode in list {
        match mode {
            ast::TransactionMode::IsolationLevel(level) => isolation = Some(isolation_of(level)?),
            ast::TransactionMode::AccessMode(ast::TransactionAccessMode::ReadOnly) => {
                read_only = Some(true)
            }
            ast::TransactionMode::AccessMode(ast::TransactionAccessMode::ReadWrite) => {
                read_only = Some(false)
            }
        }
    }
    Ok((isolation, read_only))
}

fn rows_result(command: &'static str, affected: u64, rows: Option<RowSet>) -> StatementResult {
    StatementResult {
        command: std::borrow::Cow::Borrowed(command),
        affected,
        rows: rows.map(|(columns, rows)| Rows::new(columns, rows)),
    }
}

/// Whether a statement changes data or schema (refused in READ ONLY).
fn writes(statement: &Ast) -> bool {
    !matches!(statement, Ast::Query(_) | Ast::Explain { .. })
}

/// Largest text or bytes buffer, in bytes, a connection keeps between
/// prepared statement runs for the next run's parameter.
const MAX_KEPT_PARAM_BYTES: usize = 4096;

/// Heap bytes `value` holds (its string or byte buffer's capacity).
fn heap_bytes(value: &Value) -> usize {
    match value {
        Value::Text(text) => text.capacity(),
        Value::Blob(bytes) => bytes.capacity(),
        _ => 0,
    }
}

/// Runs one DML statement of an explicit transaction that has no
/// SAVEPOINT open, without a statement savepoint (no undo entry per
/// written row, nothing to release). Statement atomicity still holds as
/// seen from SQL: an error marks the transaction failed (`failed`), and a
/// failed transaction with no savepoint accepts only ROLLBACK (COMMIT
/// rolls back too), so the failing statement's partial writes are never
/// read or committed: they are discarded with the whole transaction.
fn run_unguarded(
    tx: &mut Transaction,
    failed: &mut bool,
    statement: &Ast,
    params: &[Value],
    cache: Option<&PlanCache>,
    memo: Option<&mut PlanMemo>,
) -> Result<StatementResult> {
    debug_assert!(!*failed, "a failed transaction runs no statement");
    let result = run_data_statement(tx, statement, params, cache, memo);
    *failed = result.is_err();
    result
}

/// Runs one data statement (DML, DDL, EXPLAIN) in `tx`, with the plan
/// cache of a prepared statement if there is one.
fn run_data_statement(
    tx: &mut Transaction,
    statement: &Ast,
    params: &[Value],
    cache: Option<&PlanCache>,
    memo: Option<&mut PlanMemo>,
) -> Result<StatementResult> {
    match statement {
        Ast::Query(_) | Ast::Insert(_) | Ast::Update(_) | Ast::Delete(_) => {
            // A plan already checked in this transaction runs borrowed from
            // the memo (no reference count taken per run).
            if let (Some(cache), Some(memo)) = (cache, memo.as_deref()) {
                if let Some(cached) = memo.get(&cache.id()) {
                    return run_cached_plan(tx, cached, params);
                }
            }
            let cached = match cache {
                Some(cache) => cache.lookup(tx)?,
                None => None,
            };
            let cached = match cached {
                Some(cached) => cached,
                None => {
                    let mut binder = Binder::new(tx);
                    let plan = binder.bind_statement(statement)?;
                    let fresh = Arc::new(CachedPlan {
                        plan: Arc::new(plan),
                        subqueries: std::mem::take(&mut binder.subqueries),
                        params: binder.params,
                        dependencies: std::mem::take(&mut binder.dependencies),
                    });
                    if let Some(cache) = cache {
                        cache.store(Arc::clone(&fresh));
                    }
                    fresh
                }
            };
            if let (Some(cache), Some(memo)) = (cache, memo) {
                memo.insert(cache.id(), Arc::clone(&cached));
            }
            run_cached_plan(tx, &cached, params)
        }
        Ast::Explain {
            analyze: false,
            query_plan: false,
            estimate: false,
            format: None,
            options: None,
            statement: inner,
            ..
        } => {
            let mut binder = Binder::new(tx);
            let plan = binder.bind_statement(inner)?;
            let mut lines = explain(&plan);
            for (i, sub) in binder.subqueries.iter().enumerate() {
                lines.push(format!("SubPlan {}", i + 1));
                let sub_lines = explain(&Plan::Select(sub.clone()));
                lines.extend(sub_lines.into_iter().map(|l| format!("  {l}")));
            }
            let rows = lines.into_iter().map(|l| vec![Value::Text(l)]).collect();
            Ok(rows_result(
                "EXPLAIN",
                0,
                Some((vec!["QUERY PLAN".into()], rows)),
            ))
        }
        Ast::CreateTable(create) => {
            ddl::create_table(tx, create)?;
            Ok(StatementResult::done("CREATE TABLE"))
        }
        Ast::CreateIndex(create) => {
            ddl::create_index(tx, create)?;
            Ok(StatementResult::done("CREATE INDEX"))
        }
        Ast::Drop {
            object_type,
            if_exists,
            names,
            purge,
            temporary,
            table,
            ..
        } => Ok(StatementResult::done(ddl::drop(
            tx,
            object_type,
            *if_exists,
            names,
            *purge,
            *temporary,
            table.as_ref(),
        )?)),
        Ast::AlterTable(alter) => {
            ddl::alter_table(tx, alter)?;
            Ok(StatementResult::done("ALTER TABLE"))
        }
        other => Err(QueryError::not_supported(format!(
            "statement {}",
            statement_kind(other)
        ))),
    }
}

/// Runs a bound plan with its subqueries, once the parameters are counted.
fn run_cached_plan(
    tx: &mut Transaction,
    cached: &CachedPlan,
    params: &[Value],
) -> Result<StatementResult> {
    check_param_count(cached.params, params.len())?;
    if cached.subqueries.is_empty() {
        run_plan(tx, &cached.plan, params)
    } else {
        let plan = with_subqueries(tx, &cached.plan, &cached.subqueries, params)?;
        run_plan(tx, &plan, params)
    }
}

fn check_param_count(needed: usize, given: usize) -> Result<()> {
    if needed != given {
        return Err(QueryError::sql(
            "08P01",
            format!("the statement takes {needed} parameters, {given} were given"),
        ));
    }
    Ok(())
}

fn run_plan(tx: &mut Transaction, plan: &Plan, params: &[Value]) -> Result<StatementResult> {
    Ok(match plan {
        Plan::Select(select) => {
            let (columns, rows) = run_select(tx, select, params)?;
            rows_result("SELECT", rows.len() as u64, Some((columns, rows)))
        }
        Plan::Insert(insert) => {
            let (n, rows) = run_insert(tx, insert, params)?;
            rows_result("INSERT", n, rows)
        }
        Plan::Update(update) => {
            let (n, rows) = run_update(tx, update, params)?;
            rows_result("UPDATE", n, rows)
        }
        Plan::Delete(delete) => {
            let (n, rows) = run_delete(tx, delete, params)?;
            rows_result("DELETE", n, rows)
        }
    })
}

/// Sleeps a little before an autocommit retry, longer on later attempts.
fn backoff(attempt: u32) {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    let ceiling_us = 50u64 << attempt.min(8);
    std::thread::sleep(std::time::Duration::from_micros(random % ceiling_us));
}

impl Connection {
    /// Opens a session on `db` (creating the catalog table on first use).
    pub fn new(db: Database) -> Result<Connection> {
        let exists = db.begin_read()?.open_table(SCHEMA_TABLE).is_ok();
        if !exists {
            // READ COMMITTED: a concurrent creator's table is simply reused.
            db.run(IsolationLevel::ReadCommitted, |tx| {
                tx.open_table(SCHEMA_TABLE).map(|_| ())
            })?;
        }
        Ok(Connection {
            db,
            explicit: None,
            default_isolation: IsolationLevel::default(),
            param_scratch: Vec::new(),
        })
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Whether an explicit transaction (BEGIN) is open.
    pub fn in_transaction(&self) -> bool {
        self.explicit.is_some()
    }

    /// Whether the open transaction failed and waits for ROLLBACK.
    pub fn transaction_failed(&self) -> bool {
        self.explicit.as_ref().is_some_and(|e| e.failed)
    }

    /// The isolation level new transactions get (SERIALIZABLE unless changed).
    pub fn default_isolation(&self) -> IsolationLevel {
        self.default_isolation
    }

    /// Sets the isolation level new transactions get.
    pub fn set_default_isolation(&mut self, level: IsolationLevel) {
        self.default_isolation = level;
    }

    /// Every table's schema, in name order, as this session sees them.
    pub fn tables(&mut self) -> Result<Vec<crate::catalog::TableSchema>> {
        match self.explicit.as_mut().and_then(|e| e.tx.as_mut()) {
            Some(tx) => crate::catalog::list_tables(tx),
            None => {
                let mut tx = self.db.begin(IsolationLevel::RepeatableRead)?;
                let tables = crate::catalog::list_tables(&mut tx);
                tx.rollback();
                tables
            }
        }
    }

    /// Runs a script of `;`-separated statements (no parameters), stopping
    /// at the first error. The script is parsed whole first.
    pub fn execute(&mut self, sql: &str) -> Result<Vec<StatementResult>> {
        let statements = match parse_script(sql) {
            Ok(s) => s,
            Err(err) => {
                self.fail_transaction();
                return Err(err);
            }
        };
        let mut results = Vec::with_capacity(statements.len());
        for statement in &statements {
            results.push(self.run(&statement.statement, &[])?);
        }
        Ok(results)
    }

    /// Runs one statement with parameters and returns its rows (none for a
    /// statement that returns no rows).
    pub fn query(&mut self, sql: &str, params: &[&dyn ToSql]) -> Result<Rows> {
        Ok(self.execute_one(sql, params)?.rows.unwrap_or_default())
    }

    /// Runs one statement with parameters.
    pub fn execute_one(&mut self, sql: &str, params: &[&dyn ToSql]) -> Result<StatementResult> {
        let parsed = match parse_one(sql) {
            Ok(p) => p,
            Err(err) => {
                self.fail_transaction();
                return Err(err);
            }
        };
        let values: Vec<Value> = params.iter().map(|p| p.to_sql()).collect();
        self.run(&parsed.statement, &values)
    }

    /// Parses a statement once for repeated execution.
    pub fn prepare(&mut self, sql: &str) -> Result<Statement> {
        Ok(Statement {
            parsed: Arc::new(parse_one(sql)?),
            cache: Arc::new(PlanCache::default()),
        })
    }

    /// Runs a prepared statement.
    pub fn execute_prepared(
        &mut self,
        statement: &Statement,
        params: &[&dyn ToSql],
    ) -> Result<StatementResult> {
        // Parameters go into a list reused from run to run; it is taken out
        // so `self` stays free. Its values are kept too: a text or bytes
        // parameter is copied into the previous run's buffer (no allocation
        // per run), unless that buffer grew past `MAX_KEPT_PARAM_BYTES`.
        let mut values = std::mem::take(&mut self.param_scratch);
        values.truncate(params.len());
        for (slot, param) in values.iter_mut().zip(params) {
            param.to_sql_into(slot);
        }
        let kept = values.len();
        values.extend(params[kept..].iter().map(|p| p.to_sql()));
        debug_assert_eq!(values.len(), params.len());
        let direct = match self.explicit.as_mut() {
            Some(explicit) => explicit.direct_insert(&statement.cache, &values),
            None => None,
        };
        let result = match direct {
            Some(result) => result,
            None => self.run_cached(&statement.parsed.statement, &values, Some(&statement.cache)),
        };
        for value in &mut values {
            if heap_bytes(value) > MAX_KEPT_PARAM_BYTES {
                *value = Value::Null;
            }
        }
        self.param_scratch = values;
        result
    }

    /// Runs one parsed statement.
    pub fn run(&mut self, statement: &Ast, params: &[Value]) -> Result<StatementResult> {
        self.run_cached(statement, params, None)
    }

    fn run_cached(
        &mut self,
        statement: &Ast,
        params: &[Value],
        cache: Option<&PlanCache>,
    ) -> Result<StatementResult> {
        match statement {
            Ast::StartTransaction {
                modes: list,
                statements,
                exception: None,
                has_end_keyword: false,
                modifier: None,
                ..
            } if statements.is_empty() => self.begin(list),
            Ast::Commit {
                chain: false,
                modifier: None,
                ..
            } => self.commit(),
            Ast::Rollback {
                chain: false,
                savepoint,
            } => match savepoint {
                None => Ok(self.rollback()),
                Some(name) => self.rollback_to(&crate::bind::ident_name(name)),
            },
            Ast::Savepoint { name } => self.savepoint(crate::bind::ident_name(name)),
            Ast::ReleaseSavepoint { name } => self.release(&crate::bind::ident_name(name)),
            Ast::Set(ast::Set::SetTransaction {
                modes: list,
                snapshot: None,
                session,
            }) => self.set_transaction(list, *session),
            other => self.run_data(other, params, cache),
        }
    }

    fn fail_transaction(&mut self) {
        if let Some(explicit) = &mut self.explicit {
            explicit.failed = true;
        }
    }

    fn aborted() -> QueryError {
        QueryError::sql(
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        )
    }

    fn begin(&mut self, list: &[ast::TransactionMode]) -> Result<StatementResult> {
        if let Some(explicit) = &self.explicit {
            if explicit.failed {
                return Err(Self::aborted());
            }
            // PostgreSQL warns and keeps the open transaction.
            return Ok(StatementResult::done("BEGIN"));
        }
        let (isolation, read_only) = modes(list)?;
        self.explicit = Some(Explicit {
            tx: None,
            isolation: isolation.unwrap_or(self.default_isolation),
            read_only: read_only.unwrap_or(false),
            savepoints: Vec::new(),
            failed: false,
            checked_plans: PlanMemo::default(),
            direct_table: None,
        });
        Ok(StatementResult::done("BEGIN"))
    }

    fn commit(&mut self) -> Result<StatementResult> {
        let Some(explicit) = self.explicit.take() else {
            // PostgreSQL warns: there is no transaction in progress.
            return Ok(StatementResult::done("COMMIT"));
        };
        if explicit.failed {
            if let Some(tx) = explicit.tx {
                tx.rollback();
            }
            return Ok(StatementResult::done("ROLLBACK"));
        }
        if let Some(tx) = explicit.tx {
            tx.commit()?;
        }
        Ok(StatementResult::done("COMMIT"))
    }

    fn rollback(&mut self) -> StatementResult {
        if let Some(Explicit { tx: Some(tx), .. }) = self.explicit.take() {
            tx.rollback();
        }
        StatementResult::done("ROLLBACK")
    }

    fn explicit_tx(&mut self, what: &str) -> Result<&mut Explicit> {
        let explicit = self.explicit.as_mut().ok_or_else(|| {
            QueryError::sql(
                "25P01",
                format!("{what} can only be used in transaction blocks"),
            )
        })?;
        if explicit.tx.is_none() {
            explicit.tx = Some(self.db.begin(explicit.isolation)?);
        }
        Ok(explicit)
    }

    fn savepoint(&mut self, name: String) -> Result<StatementResult> {
        if self.transaction_failed() {
            return Err(Self::aborted());
        }
        let explicit = self.explicit_tx("SAVEPOINT")?;
        let Some(tx) = explicit.tx.as_mut() else {
            return Err(QueryError::invalid("no transaction"));
        };
        let savepoint = tx.savepoint();
        explicit.savepoints.push((name, savepoint));
        Ok(StatementResult::done("SAVEPOINT"))
    }

    fn find_savepoint(explicit: &Explicit, name: &str) -> Result<usize> {
        explicit
            .savepoints
            .iter()
            .rposition(|(n, _)| n == name)
            .ok_or_else(|| QueryError::sql("3B001", format!("savepoint \"{name}\" does not exist")))
    }

    fn rollback_to(&mut self, name: &str) -> Result<StatementResult> {
        let explicit = self.explicit_tx("ROLLBACK TO SAVEPOINT")?;
        let position = Self::find_savepoint(explicit, name)?;
        explicit.savepoints.truncate(position + 1);
        explicit.checked_plans.clear();
        if let (Some(tx), Some((_, savepoint))) = (explicit.tx.as_mut(), explicit.savepoints.last())
        {
            tx.rollback_to(savepoint)?;
        }
        explicit.failed = false;
        Ok(StatementResult::done("ROLLBACK"))
    }

    fn release(&mut self, name: &str) -> Result<StatementResult> {
        if self.transaction_failed() {
            return Err(Self::aborted());
        }
        let explicit = self.explicit_tx("RELEASE SAVEPOINT")?;
        let position = Self::find_savepoint(explicit, name)?;
        let released: Vec<(String, Savepoint)> = explicit.savepoints.drain(position..).collect();
        if let Some(tx) = explicit.tx.as_mut() {
            for (_, savepoint) in released {
                tx.release(savepoint)?;
            }
        }
        Ok(StatementResult::done("RELEASE"))
    }

    fn set_transaction(
        &mut self,
        list: &[ast::TransactionMode],
        session: bool,
    ) -> Result<StatementResult> {
        let (isolation, read_only) = modes(list)?;
        if session {
            if read_only == Some(true) {
                return Err(QueryError::not_supported("read-only session default"));
            }
            if let Some(level) = isolation {
                self.default_isolation = level;
            }
            return Ok(StatementResult::done("SET"));
        }
        let Some(explicit) = self.explicit.as_mut() else {
            return Err(QueryError::sql(
                "25P01",
                "SET TRANSACTION can only be used in transaction blocks",
            ));
        };
        if explicit.failed {
            return Err(Self::aborted());
        }
        if isolation.is_some() && explicit.tx.is_some() {
            explicit.failed = true;
            return Err(QueryError::sql(
                "25001",
                "SET TRANSACTION ISOLATION LEVEL must be called before any query",
            ));
        }
        if let Some(level) = isolation {
            explicit.isolation = level;
        }
        if let Some(ro) = read_only {
            explicit.read_only = ro;
        }
        Ok(StatementResult::done("SET"))
    }

    fn run_data(
        &mut self,
        statement: &Ast,
        params: &[Value],
        cache: Option<&PlanCache>,
    ) -> Result<StatementResult> {
        let db = &self.db;
        match &mut self.explicit {
            Some(explicit) => {
                if explicit.failed {
                    return Err(Self::aborted());
                }
                if explicit.read_only && writes(statement) {
                    explicit.failed = true;
                    return Err(QueryError::sql(
                        "25006",
                        format!(
                            "cannot execute {} in a read-only transaction",
                            statement_kind(statement)
                        ),
                    ));
                }
                if explicit.tx.is_none() {
                    explicit.tx = Some(db.begin(explicit.isolation)?);
                }
                let Some(tx) = explicit.tx.as_mut() else {
                    return Err(QueryError::invalid("no transaction"));
                };
                let dml = matches!(
                    statement,
                    Ast::Query(_) | Ast::Insert(_) | Ast::Update(_) | Ast::Delete(_)
                );
                let memo = if dml {
                    (explicit.isolation != IsolationLevel::ReadCommitted)
                        .then_some(&mut explicit.checked_plans)
                } else {
                    // DDL (or anything else) may change schemas: forget the checks.
                    explicit.checked_plans.clear();
                    None
                };
                if dml && explicit.savepoints.is_empty() {
                    return run_unguarded(tx, &mut explicit.failed, statement, params, cache, memo);
                }
                let savepoint = tx.savepoint();
                match run_data_statement(tx, statement, params, cache, memo) {
                    Ok(result) => {
                        tx.release(savepoint)?;
                        Ok(result)
                    }
                    Err(err) => {
                        tx.rollback_to(&savepoint)?;
                        explicit.failed = true;
                        Err(err)
                    }
                }
            }
            None => {
                let mut attempt = 0;
                loop {
                    let mut tx = db.begin(self.default_isolation)?;
                    let result = run_data_statement(&mut tx, statement, params, cache, None)?;
                    match tx.commit() {
                        Ok(_) => return Ok(result),
                        Err(err) if err.is_retryable() && attempt < MAX_AUTOCOMMIT_RETRIES => {
                            attempt += 1;
                            backoff(attempt);
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(Explicit { tx: Some(tx), .. }) = self.explicit.take() {
            tx.rollback();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect() -> Connection {
        crate::test_db::memory_connection("/connection/db.mmsb")
    }

    fn count(c: &mut Connection) -> Option<i64> {
        c.query("SELECT count(*) FROM t", &[])
            .expect("count")
            .scalar::<Option<i64>>()
            .expect("scalar")
    }

    #[test]
    fn a_failing_statement_without_savepoint_aborts_and_commit_discards_it() {
        let mut c = connect();
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)")
            .expect("create");
        c.execute("INSERT INTO t VALUES (1, 'a')").expect("insert");
        c.execute("BEGIN").expect("begin");
        c.execute("INSERT INTO t VALUES (2, 'b')").expect("insert");
        // Row 3 is written before row 1 repeats a key.
        let err = c
            .execute("INSERT INTO t VALUES (3, 'c'), (1, 'dup')")
            .expect_err("duplicate key");
        assert!(err.to_string().contains("duplicate key"), "{err}");
        let aborted = c.query("SELECT count(*) FROM t", &[]).expect_err("aborted");
        assert!(aborted.to_string().contains("aborted"), "{aborted}");
        let tags = c.execute("COMMIT").expect("commit");
        assert_eq!(tags[0].tag(), "ROLLBACK");
        assert_eq!(count(&mut c), Some(1));
    }

    #[test]
    fn a_failing_statement_after_a_savepoint_is_undone_whole() {
        let mut c = connect();
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)")
            .expect("create");
        c.execute("BEGIN; INSERT INTO t VALUES (1, 'a'); SAVEPOINT s")
            .expect("begin");
        c.execute("INSERT INTO t VALUES (3, 'c'), (1, 'dup')")
            .expect_err("duplicate key");
        c.execute("ROLLBACK TO SAVEPOINT s").expect("rollback to");
        c.execute("INSERT INTO t VALUES (2, 'b')").expect("insert");
        c.execute("COMMIT").expect("commit");
        let ids = c.query("SELECT id FROM t ORDER BY id", &[]).expect("ids");
        let ids: Vec<i64> = (0..ids.len())
            .filter_map(|i| ids.get(i).and_then(|r| r.get::<i64>(0).ok()))
            .collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn prepared_parameters_reuse_their_buffers_without_leaking_values() {
        let mut c = connect();
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)")
            .expect("create");
        let insert = c.prepare("INSERT INTO t VALUES ($1, $2)").expect("prepare");
        let long = "x".repeat(MAX_KEPT_PARAM_BYTES + 1);
        let texts: [Option<&str>; 5] = [
            Some("a long first text"),
            Some("b"),
            None,
            Some(&long),
            Some("c"),
        ];
        for (id, text) in (0i64..).zip(texts) {
            insert.execute(&mut c, &[&id, &text]).expect("insert");
        }
        let select = c.prepare("SELECT s FROM t WHERE id = $1").expect("prepare");
        for (id, text) in (0i64..).zip(texts) {
            let rows = select.query(&mut c, &[&id]).expect("select");
            let got = rows.get(0).and_then(|r| r.get::<Option<String>>(0).ok());
            assert_eq!(got, Some(text.map(str::to_owned)), "row {id}");
        }
        assert!(c
            .param_scratch
            .iter()
            .all(|v| heap_bytes(v) <= MAX_KEPT_PARAM_BYTES));
    }

    /// One step of a session driving a prepared one-row INSERT.
    #[derive(Debug, Clone)]
    enum Step {
        Begin,
        Insert(i64, Option<String>),
        Savepoint,
        RollbackTo,
        Release,
        Commit,
        Rollback,
        /// A statement that fails (the transaction is aborted).
        Fail,
        /// DDL in the transaction (the plan memo is cleared).
        AddColumn,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            1 => Just(Step::Begin),
            8 => (0i64..6, proptest::option::of("[a-c]{0,2}"))
                .prop_map(|(id, s)| Step::Insert(id, s)),
            1 => Just(Step::Savepoint),
            1 => Just(Step::RollbackTo),
            1 => Just(Step::Release),
            1 => Just(Step::Commit),
            1 => Just(Step::Rollback),
            1 => Just(Step::Fail),
            1 => Just(Step::AddColumn),
        ]
    }

    /// Runs `steps`, inserting with a prepared statement (`prepared`, the
    /// direct shortcut where it applies) or with SQL text (the general
    /// path); returns each step's outcome and the table's rows.
    fn session(steps: &[Step], prepared: bool) -> (Vec<String>, Vec<Vec<Value>>) {
        let mut c = connect();
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s VARCHAR(1))")
            .expect("create");
        let insert = c.prepare("INSERT INTO t VALUES ($1, $2)").expect("prepare");
        let mut added = 0;
        let outcomes = steps
            .iter()
            .map(|step| {
                let outcome = match step {
                    Step::Insert(id, s) if prepared => insert.execute(&mut c, &[id, s]),
                    Step::Insert(id, s) => c.execute_one("INSERT INTO t VALUES ($1, $2)", &[id, s]),
                    Step::AddColumn => {
                        added += 1;
                        c.execute_one(&format!("ALTER TABLE t ADD COLUMN c{added} INTEGER"), &[])
                    }
                    other => {
                        let sql = match other {
                            Step::Begin => "BEGIN",
                            Step::Savepoint => "SAVEPOINT s",
                            Step::RollbackTo => "ROLLBACK TO SAVEPOINT s",
                            Step::Release => "RELEASE SAVEPOINT s",
                            Step::Commit => "COMMIT",
                            Step::Rollback => "ROLLBACK",
                            _ => "SELECT 1 / 0",
                        };
                        c.execute_one(sql, &[])
                    }
                };
                match outcome {
                    Ok(result) => format!("{} {}", result.tag(), result.affected),
                    Err(err) => format!("{} {err}", err.sqlstate()),
                }
            })
            .collect();
        c.execute("ROLLBACK").expect("rollback");
        let rows = c
            .query("SELECT id, s FROM t ORDER BY id", &[])
            .expect("select")
            .iter()
            .map(|r| r.values().to_vec())
            .collect();
        (outcomes, rows)
    }

    #[test]
    fn a_prepared_insert_after_a_duplicate_key_is_refused_until_rollback() {
        let mut c = connect();
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)")
            .expect("create");
        let insert = c.prepare("INSERT INTO t VALUES ($1, $2)").expect("prepare");
        c.execute("BEGIN").expect("begin");
        for id in 0i64..3 {
            insert.execute(&mut c, &[&id, &"a"]).expect("insert");
        }
        let err = insert.execute(&mut c, &[&1i64, &"b"]).expect_err("dup");
        assert!(err.to_string().contains("duplicate key"), "{err}");
        assert!(c.transaction_failed());
        let aborted = insert.execute(&mut c, &[&9i64, &"c"]).expect_err("aborted");
        assert_eq!(aborted.sqlstate(), "25P02");
        assert_eq!(c.execute("COMMIT").expect("commit")[0].tag(), "ROLLBACK");
        assert_eq!(count(&mut c), Some(0));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn prepared_inserts_in_transactions_match_the_general_path(
            steps in proptest::collection::vec(step(), 1..24),
        ) {
            let (direct, direct_rows) = session(&steps, true);
            let (general, general_rows) = session(&steps, false);
            proptest::prop_assert_eq!(direct, general);
            proptest::prop_assert_eq!(direct_rows, general_rows);
        }
    }
}
