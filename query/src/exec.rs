//! The executor: runs bound plans against a transaction. Scans stream
//! through the engine's range iterators (primary-key gets and ranges, index
//! scans, full scans); joined tables after the first are read once and
//! hashed on their join keys; aggregation hashes groups in first-seen
//! order; sorting, DISTINCT and LIMIT/OFFSET finish the rows. Writes keep
//! rows and index entries in step and enforce NOT NULL, VARCHAR lengths,
//! primary keys and UNIQUE indexes. Hot paths work on the encoded rows:
//! integer tests in a filter are decided on the row's bytes, aggregates of
//! bare columns read just their column, and an UPDATE of non-key,
//! non-indexed columns splices the new values into the stored row.

mod direct;

use std::collections::{HashMap, HashSet};
use std::ops::Bound;

use mmsb_engine::Transaction;

use crate::catalog::{IndexDef, TableSchema};
use crate::encoding::{
    decode_key, decode_row_masked, encode_key, encode_key_value, encode_row_into, prefix_end,
    row_column, splice_row, RawValue, RowFault,
};
use crate::error::{QueryError, Result};
use crate::expr::{Expr, RawCondition};
use crate::plan::{
    encoded_aggregate, updates_in_place, Access, AggCall, AggFunc, DeletePlan, InsertPlan,
    InsertSource, JoinKind, KeyBound, Plan, Returning, SelectPlan, SetOp, Source, UpdatePlan,
};
use crate::value::{DataType, Value};

pub use direct::DirectInsert;

/// Rows produced by a statement: column names and values.
pub type RowSet = (Vec<String>, Vec<Vec<Value>>);

/// Key ranges or points a scan reads.
enum KeyRange {
    /// Nothing can match.
    Empty,
    /// Every row (a bound could not be used exactly).
    Full,
    /// One range.
    Range(Bound<Vec<u8>>, Bound<Vec<u8>>),
    /// Exact keys.
    Points(Vec<Vec<u8>>),
}

/// The value as the column's type, when that is exact; `None` otherwise.
fn exact_key_value(ty: DataType, v: Value) -> Option<Value> {
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    match (ty, v) {
        (DataType::Real, Value::Integer(i)) if (i as f64) as i64 == i && i != i64::MAX => {
            Some(Value::Real(i as f64))
        }
        (DataType::Integer, Value::Real(r))
            if r.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&r) =>
        {
            Some(Value::Integer(r as i64))
        }
        (ty, v) if v.data_type() == Some(ty) => Some(v),
        _ => None,
    }
}

/// Why a bound could not be turned into key bytes.
enum NoKey {
    /// The bound is NULL: nothing matches.
    Null,
    /// The value's type does not map exactly onto the column: scan everything.
    Inexact,
}

fn key_part(
    schema: &TableSchema,
    column: usize,
    e: &Expr,
    params: &[Value],
    out: &mut Vec<u8>,
) -> Result<Result<(), NoKey>> {
    let v = e.eval(&[], params)?;
    if v.is_null() {
        return Ok(Err(NoKey::Null));
    }
    match exact_key_value(schema.columns[column].ty, v) {
        Some(v) => {
            encode_key_value(&v, out);
            Ok(Ok(()))
        }
        None => Ok(Err(NoKey::Inexact)),
    }
}

fn prefix_range(
    schema: &TableSchema,
    columns: &[usize],
    eq: &[Expr],
    lower: &KeyBound,
    upper: &KeyBound,
    params: &[Value],
) -> Result<KeyRange> {
    let mut prefix = Vec::new();
    for (e, &c) in eq.iter().zip(columns) {
        match key_part(schema, c, e, params, &mut prefix)? {
            Ok(()) => {}
            Err(NoKey::Null) => return Ok(KeyRange::Empty),
            Err(NoKey::Inexact) => return Ok(KeyRange::Full),
        }
    }
    let next = columns.get(eq.len()).copied();
    let bound_key = |b: &(Expr, bool)| -> Result<Result<(Vec<u8>, bool), NoKey>> {
        let mut key = prefix.clone();
        let Some(c) = next else {
            return Ok(Err(NoKey::Inexact));
        };
        Ok(key_part(schema, c, &b.0, params, &mut key)?.map(|()| (key, b.1)))
    };
    let lo = match lower {
        None if prefix.is_empty() => Bound::Unbounded,
        None => Bound::Included(prefix.clone()),
        Some(b) => match bound_key(b)? {
            Ok((key, true)) => Bound::Included(key),
            Ok((key, false)) => match prefix_end(&key) {
                Some(end) => Bound::Included(end),
                None => return Ok(KeyRange::Empty),
            },
            Err(NoKey::Null) => return Ok(KeyRange::Empty),
            Err(NoKey::Inexact) => return Ok(KeyRange::Full),
        },
    };
    let hi = match upper {
        None if prefix.is_empty() => Bound::Unbounded,
        None => prefix_end(&prefix).map_or(Bound::Unbounded, Bound::Excluded),
        Some(b) => match bound_key(b)? {
            Ok((key, true)) => prefix_end(&key).map_or(Bound::Unbounded, Bound::Excluded),
            Ok((key, false)) => Bound::Excluded(key),
            Err(NoKey::Null) => return Ok(KeyRange::Empty),
            Err(NoKey::Inexact) => return Ok(KeyRange::Full),
        },
    };
    Ok(KeyRange::Range(lo, hi))
}

fn as_slice_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    b.as_ref().map(Vec::as_slice)
}

/// Decodes a stored row (only the `needed` columns, when given), filling
/// columns added after it was written.
fn decode_stored_row(
    schema: &TableSchema,
    bytes: &[u8],
    needed: Option<&[bool]>,
    out: &mut Vec<Value>,
) -> Result<()> {
    decode_row_masked(bytes, needed, out)?;
    if out.len() > schema.columns.len() {
        return Err(QueryError::corrupted(format!(
            "row of table {} has {} columns, the schema {}",
            schema.name,
            out.len(),
            schema.columns.len()
        )));
    }
    for column in &schema.columns[out.len()..] {
        out.push(column.default.clone());
    }
    Ok(())
}

/// A row callback: (primary key, row) → keep going? The row buffer is the
/// scan's own and is reused for the next row: a sink that keeps the row
/// takes it (`std::mem::take`), one that only reads it leaves it.
type RowSink<'a> = dyn FnMut(&[u8], &mut Vec<Value>) -> Result<bool> + 'a;

/// Calls `sink` with each row of the source that passes its filter, in the
/// access path's order, until it returns false.
fn scan_source(
    tx: &mut Transaction,
    source: &Source,
    params: &[Value],
    sink: &mut RowSink<'_>,
) -> Result<()> {
    if let Some(derived) = &source.derived {
        let (_, rows) = run_select(tx, derived, params)?;
        'rows: for mut row in rows {
            for cond in &source.filter {
                if !cond.eval_condition(&row, params)? {
                    continue 'rows;
                }
            }
            if !sink(&[], &mut row)? {
                break;
            }
        }
        return Ok(());
    }
    let schema = &source.schema;
    let range = key_range(tx, source, params)?;
    let filter = RowFilter::new(source, &range, params);
    let needed = source.needed.as_deref();
    let mut row = Vec::with_capacity(schema.columns.len());
    visit_entries(tx, source, range, &mut |key, bytes| {
        // Integer tests on the encoded row reject most rows undecoded.
        let verdict = filter.on_encoded(bytes)?;
        if verdict == Some(false) {
            return Ok(true);
        }
        decode_stored_row(schema, bytes, needed, &mut row)?;
        if verdict.is_none() && !filter.on_row(&row, params)? {
            return Ok(true);
        }
        sink(key, &mut row)
    })
}

/// The keys a stored table's access path reads.
fn key_range(tx: &mut Transaction, source: &Source, params: &[Value]) -> Result<KeyRange> {
    let schema = &source.schema;
    Ok(match &source.access {
        Access::FullScan => KeyRange::Full,
        Access::Primary { eq, lower, upper } => {
            let range = prefix_range(schema, &schema.primary_key, eq, lower, upper, params)?;
            match range {
                KeyRange::Range(Bound::Included(lo), _) if eq.len() == schema.primary_key.len() => {
                    KeyRange::Points(vec![lo])
                }
                other => other,
            }
        }
        Access::PrimaryIn(list) => {
            let mut keys = Vec::new();
            let mut exact = true;
            for e in list {
                let mut key = Vec::new();
                match key_part(schema, schema.primary_key[0], e, params, &mut key)? {
                    Ok(()) => keys.push(key),
                    Err(NoKey::Null) => {}
                    Err(NoKey::Inexact) => exact = false,
                }
            }
            keys.sort();
            keys.dedup();
            if exact {
                KeyRange::Points(keys)
            } else {
                KeyRange::Full
            }
        }
        Access::Index {
            index,
            eq,
            lower,
            upper,
        } => {
            let def = &schema.indexes[*index];
            match prefix_range(schema, &def.columns, eq, lower, upper, params)? {
                KeyRange::Range(lo, hi) => {
                    let keys = index_lookup(tx, schema, def, &lo, &hi, source.reverse)?;
                    KeyRange::Points(keys)
                }
                other => other,
            }
        }
    })
}

/// Calls `visit` with each stored entry of `range` — (primary key, encoded
/// row) → keep going? — in the source's order, until it returns false.
/// Range entries are lent from the pinned leaf: no copy or reference count
/// per row. Generic over the visitor, so that the per-row call the engine
/// makes is the only indirect one.
fn visit_entries<V>(
    tx: &mut Transaction,
    source: &Source,
    range: KeyRange,
    visit: &mut V,
) -> Result<()>
where
    V: FnMut(&[u8], &[u8]) -> Result<bool>,
{
    let schema = &source.schema;
    let mut data = tx.open_table(&schema.data_table())?;
    match range {
        KeyRange::Empty => {}
        KeyRange::Points(keys) => {
            let by_index = matches!(source.access, Access::Index { .. });
            for key in keys {
                let Some(bytes) = data.get(&key)? else {
                    if by_index {
                        return Err(QueryError::corrupted(format!(
                            "index of {} names a missing row",
                            schema.name
                        )));
                    }
                    continue;
                };
                if !visit(&key, &bytes)? {
                    break;
                }
            }
        }
        KeyRange::Full | KeyRange::Range(..) => {
            let (lo, hi) = match range {
                KeyRange::Range(lo, hi) => (lo, hi),
                _ => (Bound::Unbounded, Bound::Unbounded),
            };
            let mut iter = data.range((as_slice_bound(&lo), as_slice_bound(&hi)))?;
            // The engine steps the entries; the first error from `visit`
            // stops the scan and is returned.
            let mut failure = None;
            iter.visit_entries(source.reverse, &mut |key, bytes| match visit(key, bytes) {
                Ok(more) => more,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A scan's row conditions: the source's filter less what an exact key
/// range already guarantees, with the integer tests among them compiled
/// to run on encoded rows.
struct RowFilter<'e> {
    /// The conditions to check, as expressions.
    checks: Vec<&'e Expr>,
    /// The checks that compile to tests on the encoded row.
    raw: Vec<RawCondition>,
    /// Whether every check compiled.
    all_raw: bool,
    /// Whether there is nothing to check.
    always: bool,
    /// The columns the checks read.
    mask: Vec<bool>,
}

impl<'e> RowFilter<'e> {
    fn new(source: &'e Source, range: &KeyRange, params: &[Value]) -> Self {
        // An exact key range already guarantees the conditions it came from.
        let exact = !matches!(range, KeyRange::Full);
        let checks: Vec<&Expr> = source
            .filter
            .iter()
            .enumerate()
            .filter(|(i, _)| !(exact && source.implied.contains(i)))
            .map(|(_, cond)| cond)
            .collect();
        let raw: Vec<RawCondition> = checks
            .iter()
            .filter_map(|cond| RawCondition::compile(cond, params))
            .collect();
        let mut columns = Vec::new();
        for cond in &checks {
            cond.columns(&mut columns);
        }
        let mut mask = vec![false; source.schema.columns.len()];
        for c in columns {
            if let Some(slot) = mask.get_mut(c) {
                *slot = true;
            }
        }
        RowFilter {
            all_raw: raw.len() == checks.len(),
            always: checks.is_empty(),
            checks,
            raw,
            mask,
        }
    }

    /// The verdict of the encoded-row tests: `Some(false)` when one fails,
    /// `Some(true)` when every check compiled and passed, `None` when the
    /// decoded row must decide.
    #[inline]
    fn on_encoded(&self, bytes: &[u8]) -> std::result::Result<Option<bool>, RowFault> {
        if self.always {
            return Ok(Some(true));
        }
        let mut decided = self.all_raw;
        for cond in &self.raw {
            match cond.eval(bytes)? {
                Some(false) => return Ok(Some(false)),
                Some(true) => {}
                None => decided = false,
            }
        }
        Ok(decided.then_some(true))
    }

    /// Every check on a decoded row (holding at least the checked columns).
    fn on_row(&self, row: &[Value], params: &[Value]) -> Result<bool> {
        for cond in &self.checks {
            if !cond.eval_condition(row, params)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether a stored row passes: decided on its bytes when the encoded
    /// tests can, else on its checked columns decoded into `scratch`.
    #[inline]
    fn passes(
        &self,
        schema: &TableSchema,
        bytes: &[u8],
        params: &[Value],
        scratch: &mut Vec<Value>,
    ) -> Result<bool> {
        if self.always {
            return Ok(true);
        }
        self.check(schema, bytes, params, scratch)
    }

    /// [`RowFilter::passes`] when there is something to check.
    fn check(
        &self,
        schema: &TableSchema,
        bytes: &[u8],
        params: &[Value],
        scratch: &mut Vec<Value>,
    ) -> Result<bool> {
        if let Some(verdict) = self.on_encoded(bytes)? {
            return Ok(verdict);
        }
        decode_stored_row(schema, bytes, Some(&self.mask), scratch)?;
        self.on_row(scratch, params)
    }
}

/// Primary keys of the index entries in a range, in index order.
fn index_lookup(
    tx: &mut Transaction,
    schema: &TableSchema,
    def: &IndexDef,
    lo: &Bound<Vec<u8>>,
    hi: &Bound<Vec<u8>>,
    reverse: bool,
) -> Result<Vec<Vec<u8>>> {
    let mut index = tx.open_table(&schema.index_table(def))?;
    let mut keys = Vec::new();
    for entry in index.range((as_slice_bound(lo), as_slice_bound(hi)))? {
        let (_, pk) = entry?;
        keys.push(pk.to_vec());
    }
    if reverse {
        keys.reverse();
    }
    Ok(keys)
}

/// Rows of one joined table, read once, with a hash on its join keys.
struct Materialized {
    rows: Vec<Vec<Value>>,
    hash: Option<HashMap<Vec<u8>, Vec<usize>>>,
}

/// Encodes join-key values; `None` when one is NULL (it matches nothing).
fn join_key(values: impl Iterator<Item = Result<Value>>) -> Result<Option<Vec<u8>>> {
    let mut key = Vec::new();
    for v in values {
        let v = v?;
        if v.is_null() {
            return Ok(None);
        }
        encode_key_value(&v, &mut key);
    }
    Ok(Some(key))
}

fn materialize(tx: &mut Transaction, source: &Source, params: &[Value]) -> Result<Materialized> {
    let mut rows = Vec::new();
    scan_source(tx, source, params, &mut |_, row| {
        rows.push(std::mem::take(row));
        Ok(true)
    })?;
    let hash = if source.hash_keys.is_empty() {
        None
    } else {
        let mut map: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            let key = join_key(
                source
                    .hash_keys
                    .iter()
                    .map(|(_, right)| right.eval(row, params)),
            )?;
            if let Some(key) = key {
                map.entry(key).or_default().push(i);
            }
        }
        Some(map)
    };
    Ok(Materialized { rows, hash })
}

/// One aggregate's running state.
#[derive(Default)]
struct Accumulator {
    count: i64,
    int_sum: i128,
    real_sum: f64,
    saw_real: bool,
    best: Option<Value>,
    seen: Option<HashSet<Vec<u8>>>,
}

impl Accumulator {
    fn new(call: &AggCall) -> Self {
        Accumulator {
            seen: call.distinct.then(HashSet::new),
            ..Accumulator::default()
        }
    }

    fn feed(&mut self, call: &AggCall, value: &Value) -> Result<()> {
        if value.is_null() {
            return Ok(());
        }
        if let Some(seen) = &mut self.seen {
            let mut key = Vec::new();
            encode_key_value(value, &mut key);
            if !seen.insert(key) {
                return Ok(());
            }
        }
        match call.func {
            AggFunc::Count => self.count += 1,
            AggFunc::Sum | AggFunc::Avg => {
                match value {
                    Value::Integer(i) => self.int_sum += i128::from(*i),
                    Value::Real(r) => {
                        self.real_sum += r;
                        self.saw_real = true;
                    }
                    other => {
                        let name = if call.func == AggFunc::Sum {
                            "sum"
                        } else {
                            "avg"
                        };
                        return Err(QueryError::sql(
                            "42883",
                            format!("function {name}({}) does not exist", other.type_name()),
                        ));
                    }
                }
                self.count += 1;
            }
            AggFunc::Min | AggFunc::Max => {
                let better = match &self.best {
                    None => true,
                    Some(best) => {
                        let ordering = value.sql_cmp(best)?;
                        match call.func {
                            AggFunc::Min => ordering == Some(std::cmp::Ordering::Less),
                            _ => ordering == Some(std::cmp::Ordering::Greater),
                        }
                    }
                };
                if better {
                    self.best = Some(value.clone());
                }
            }
        }
        Ok(())
    }

    /// [`Accumulator::feed`] for a value read in place from an encoded
    /// row: counts and integer or real sums take no owned value.
    #[inline]
    fn feed_raw(&mut self, call: &AggCall, value: RawValue<'_>) -> Result<()> {
        if self.seen.is_some() {
            return self.feed(call, &value.to_value());
        }
        match (call.func, value) {
            (_, RawValue::Null) => {}
            (AggFunc::Count, _) => self.count += 1,
            (AggFunc::Sum | AggFunc::Avg, RawValue::Integer(i)) => {
                self.int_sum += i128::from(i);
                self.count += 1;
            }
            (AggFunc::Sum | AggFunc::Avg, RawValue::Real(r)) => {
                self.real_sum += r;
                self.saw_real = true;
                self.count += 1;
            }
            _ => return self.feed(call, &value.to_value()),
        }
        Ok(())
    }

    fn result(&self, call: &AggCall) -> Result<Value> {
        Ok(match call.func {
            AggFunc::Count => Value::Integer(self.count),
            _ if self.count == 0 && matches!(call.func, AggFunc::Sum | AggFunc::Avg) => Value::Null,
            AggFunc::Sum if self.saw_real => Value::Real(self.real_sum + self.int_sum as f64),
            AggFunc::Sum => Value::Integer(
                i64::try_from(self.int_sum)
                    .map_err(|_| QueryError::out_of_range("bigint out of range"))?,
            ),
            AggFunc::Avg => Value::Real((self.real_sum + self.int_sum as f64) / self.count as f64),
            AggFunc::Min | AggFunc::Max => self.best.clone().unwrap_or(Value::Null),
        })
    }
}

/// Groups and their accumulators, in first-seen order.
struct Groups {
    index: HashMap<Vec<u8>, usize>,
    groups: Vec<(Vec<Value>, Vec<Accumulator>)>,
    /// The current row's encoded group key (reused).
    key: Vec<u8>,
}

/// Where joined rows go: WHERE, then aggregation or projection.
struct Sink<'p> {
    plan: &'p SelectPlan,
    params: &'p [Value],
    groups: Option<Groups>,
    out: Vec<Vec<Value>>,
    stop_after: Option<usize>,
}

impl<'p> Sink<'p> {
    fn push(&mut self, row: &[Value]) -> Result<bool> {
        if let Some(filter) = &self.plan.filter {
            if !filter.eval_condition(row, self.params)? {
                return Ok(true);
            }
        }
        match (&mut self.groups, &self.plan.aggregate) {
            (Some(groups), Some(agg)) => {
                let slot = if agg.group_by.is_empty() {
                    if groups.groups.is_empty() {
                        groups
                            .groups
                            .push((Vec::new(), agg.calls.iter().map(Accumulator::new).collect()));
                    }
                    0
                } else {
                    groups.key.clear();
                    for g in &agg.group_by {
                        encode_key_value(g.eval_cow(row, self.params)?.as_ref(), &mut groups.key);
                    }
                    match groups.index.get(groups.key.as_slice()) {
                        Some(&i) => i,
                        None => {
                            let values: Vec<Value> = agg
                                .group_by
                                .iter()
                                .map(|g| g.eval(row, self.params))
                                .collect::<Result<_>>()?;
                            groups
                                .groups
                                .push((values, agg.calls.iter().map(Accumulator::new).collect()));
                            groups
                                .index
                                .insert(groups.key.clone(), groups.groups.len() - 1);
                            groups.groups.len() - 1
                        }
                    }
                };
                let accumulators = &mut groups.groups[slot].1;
                for (call, acc) in agg.calls.iter().zip(accumulators.iter_mut()) {
                    match &call.arg {
                        Some(arg) => acc.feed(call, arg.eval_cow(row, self.params)?.as_ref())?,
                        None => acc.feed(call, &Value::Boolean(true))?,
                    }
                }
                Ok(true)
            }
            _ => {
                let projected = self
                    .plan
                    .projection
                    .iter()
                    .map(|e| e.eval(row, self.params))
                    .collect::<Result<Vec<_>>>()?;
                self.out.push(projected);
                Ok(self.stop_after.is_none_or(|n| self.out.len() < n))
            }
        }
    }

    fn finish(mut self) -> Result<Vec<Vec<Value>>> {
        if let (Some(groups), Some(agg)) = (self.groups.take(), &self.plan.aggregate) {
            let mut groups = groups.groups;
            if groups.is_empty() && agg.group_by.is_empty() {
                groups.push((Vec::new(), agg.calls.iter().map(Accumulator::new).collect()));
            }
            for (values, accumulators) in groups {
                let mut row = values;
                for (call, acc) in agg.calls.iter().zip(&accumulators) {
                    row.push(acc.result(call)?);
                }
                if let Some(having) = &self.plan.having {
                    if !having.eval_condition(&row, self.params)? {
                        continue;
                    }
                }
                let projected = self
                    .plan
                    .projection
                    .iter()
                    .map(|e| e.eval(&row, self.params))
                    .collect::<Result<Vec<_>>>()?;
                self.out.push(projected);
            }
        }
        Ok(self.out)
    }
}

/// Runs a single-table aggregate that [`encoded_aggregate`] accepts: each
/// row that passes the source's filter feeds each call the one column it
/// reads, taken from the encoded row (`None`: `count(*)`); no row is
/// decoded unless a filter condition needs it.
fn aggregate_encoded(
    tx: &mut Transaction,
    source: &Source,
    calls: &[AggCall],
    columns: &[Option<usize>],
    params: &[Value],
) -> Result<Vec<Accumulator>> {
    debug_assert_eq!(calls.len(), columns.len());
    let schema = &source.schema;
    let range = key_range(tx, source, params)?;
    let filter = RowFilter::new(source, &range, params);
    let mut accumulators: Vec<Accumulator> = calls.iter().map(Accumulator::new).collect();
    if filter.always {
        if let ([call], [column], [acc]) = (calls, columns, accumulators.as_mut_slice()) {
            aggregate_one(tx, source, range, call, *column, acc)?;
            return Ok(accumulators);
        }
    }
    let mut scratch = Vec::new();
    visit_entries(tx, source, range, &mut |_, bytes| {
        if !filter.passes(schema, bytes, params, &mut scratch)? {
            return Ok(true);
        }
        for ((call, column), acc) in calls.iter().zip(columns).zip(&mut accumulators) {
            let Some(column) = *column else {
                acc.count += 1;
                continue;
            };
            match row_column(bytes, column)? {
                Some(value) => acc.feed_raw(call, value)?,
                // A column added after the row was written: its default.
                None => acc.feed(call, &schema.columns[column].default)?,
            }
        }
        Ok(true)
    })?;
    Ok(accumulators)
}

/// [`aggregate_encoded`] of one aggregate over a scan with no row
/// condition left to check (`SELECT sum(v) FROM t WHERE id BETWEEN $1 AND
/// $2`): the same accumulator fed the same values, in a loop with nothing
/// else in it.
fn aggregate_one(
    tx: &mut Transaction,
    source: &Source,
    range: KeyRange,
    call: &AggCall,
    column: Option<usize>,
    acc: &mut Accumulator,
) -> Result<()> {
    let Some(column) = column else {
        // COUNT(*): every entry is a row.
        return visit_entries(tx, source, range, &mut |_, _| {
            acc.count += 1;
            Ok(true)
        });
    };
    let default = &source.schema.columns[column].default;
    visit_entries(tx, source, range, &mut |_, bytes| {
        match row_column(bytes, column)? {
            Some(value) => acc.feed_raw(call, value)?,
            // A column added after the row was written: its default.
            None => acc.feed(call, default)?,
        }
        Ok(true)
    })
}

/// Evaluates LIMIT or OFFSET: a non-negative integer, or none.
fn eval_count(e: Option<&Expr>, params: &[Value], what: &str) -> Result<Option<usize>> {
    let Some(e) = e else { return Ok(None) };
    match e.eval(&[], params)? {
        Value::Null => Ok(None),
        Value::Integer(n) if n >= 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Value::Integer(_) => Err(QueryError::sql(
            "2201W",
            format!("{what} must not be negative"),
        )),
        other => Err(QueryError::type_mismatch(format!(
            "argument of {what} must be type bigint, not type {}",
            other.type_name()
        ))),
    }
}

/// Runs a SELECT; returns the visible column names and rows.
pub fn run_select(tx: &mut Transaction, plan: &SelectPlan, params: &[Value]) -> Result<RowSet> {
    if !plan.set_ops.is_empty() {
        return run_set_operation(tx, plan, params);
    }
    let limit = eval_count(plan.limit.as_ref(), params, "LIMIT")?;
    let offset = eval_count(plan.offset.as_ref(), params, "OFFSET")?.unwrap_or(0);
    let streaming =
        plan.aggregate.is_none() && !plan.distinct && (plan.order_by.is_empty() || plan.presorted);
    let stop_after = match (streaming, limit) {
        (true, Some(limit)) => Some(limit.saturating_add(offset)),
        _ => None,
    };
    if stop_after == Some(0) {
        return Ok((plan.names.clone(), Vec::new()));
    }
    let mut joined = Vec::with_capacity(plan.sources.len().saturating_sub(1));
    for source in plan.sources.iter().skip(1) {
        joined.push(materialize(tx, source, params)?);
    }
    let mut sink = Sink {
        plan,
        params,
        groups: plan.aggregate.as_ref().map(|_| Groups {
            index: HashMap::new(),
            groups: Vec::new(),
            key: Vec::new(),
        }),
        out: Vec::new(),
        stop_after,
    };
    let encoded = encoded_aggregate(plan);
    match (plan.sources.first(), &plan.aggregate, encoded) {
        (Some(first), Some(agg), Some(columns)) => {
            let accumulators = aggregate_encoded(tx, first, &agg.calls, &columns, params)?;
            if let Some(groups) = &mut sink.groups {
                groups.groups.push((Vec::new(), accumulators));
            }
        }
        (None, _, _) => {
            sink.push(&[])?;
        }
        (Some(first), _, _) => {
            let mut emit = |_: &[u8], row: &mut Vec<Value>| {
                join_rows(plan, &joined, 1, row, params, &mut sink)
            };
            scan_source(tx, first, params, &mut emit)?;
        }
    }
    let mut rows = sink.finish()?;
    if plan.distinct {
        let mut seen = HashSet::new();
        rows.retain(|row| seen.insert(encode_key(row)));
    }
    if !plan.order_by.is_empty() && !plan.presorted {
        sort_rows(&mut rows, plan);
    }
    let visible = plan.visible();
    let rows = rows
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(|mut row| {
            row.truncate(visible);
            row
        })
        .collect();
    Ok((plan.names.clone(), rows))
}

/// Runs UNION / INTERSECT / EXCEPT: the first operand (the plan without
/// its set operations, ORDER BY and LIMIT), combined left to right with the
/// others; then ORDER BY, OFFSET and LIMIT.
fn run_set_operation(tx: &mut Transaction, plan: &SelectPlan, params: &[Value]) -> Result<RowSet> {
    let limit = eval_count(plan.limit.as_ref(), params, "LIMIT")?;
    let offset = eval_count(plan.offset.as_ref(), params, "OFFSET")?.unwrap_or(0);
    let head = SelectPlan {
        set_ops: Vec::new(),
        order_by: Vec::new(),
        presorted: false,
        limit: None,
        offset: None,
        ..plan.clone()
    };
    let (names, mut rows) = run_select(tx, &head, params)?;
    for (op, part) in &plan.set_ops {
        let other = run_select(tx, part, params)?.1;
        rows = combine(*op, rows, other);
    }
    if !plan.order_by.is_empty() {
        sort_rows(&mut rows, plan);
    }
    let rows = rows
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    Ok((names, rows))
}

/// Combines two results with SQL's set semantics (duplicates are rows
/// equal column by column, NULLs equal to each other).
fn combine(op: SetOp, left: Vec<Vec<Value>>, right: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    let distinct = |rows: Vec<Vec<Value>>| {
        let mut seen = HashSet::new();
        rows.into_iter()
            .filter(|r| seen.insert(encode_key(r)))
            .collect::<Vec<_>>()
    };
    let counts = |rows: &[Vec<Value>]| {
        let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
        for r in rows {
            *counts.entry(encode_key(r)).or_default() += 1;
        }
        counts
    };
    match op {
        SetOp::Union { all } => {
            let mut rows = left;
            rows.extend(right);
            if all {
                rows
            } else {
                distinct(rows)
            }
        }
        // INTERSECT keeps the left rows matched in the right input, EXCEPT
        // the ones not matched; with ALL each right row matches once.
        SetOp::Intersect { all } | SetOp::Except { all } => {
            let keep_matched = matches!(op, SetOp::Intersect { .. });
            let mut unmatched = counts(&right);
            let rows: Vec<Vec<Value>> = left
                .into_iter()
                .filter(|r| match unmatched.get_mut(&encode_key(r)) {
                    Some(n) if *n > 0 => {
                        if all {
                            *n -= 1;
                        }
                        keep_matched
                    }
                    _ => !keep_matched,
                })
                .collect();
            if all {
                rows
            } else {
                distinct(rows)
            }
        }
    }
}

fn sort_rows(rows: &mut [Vec<Value>], plan: &SelectPlan) {
    rows.sort_by(|a, b| {
        for key in &plan.order_by {
            let (x, y) = (&a[key.column], &b[key.column]);
            let ordering = match (x.is_null(), y.is_null()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => {
                    if key.nulls_first {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Greater
                    }
                }
                (false, true) => {
                    if key.nulls_first {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Less
                    }
                }
                (false, false) => {
                    let o = x.sort_cmp(y);
                    if key.desc {
                        o.reverse()
                    } else {
                        o
                    }
                }
            };
            if ordering.is_ne() {
                return ordering;
            }
        }
        std::cmp::Ordering::Equal
    });
}

/// Joins `row` (the sources before `level`) with the rest, feeding the sink.
fn join_rows(
    plan: &SelectPlan,
    joined: &[Materialized],
    level: usize,
    row: &[Value],
    params: &[Value],
    sink: &mut Sink<'_>,
) -> Result<bool> {
    if level == plan.sources.len() {
        return sink.push(row);
    }
    let source = &plan.sources[level];
    let table = &joined[level - 1];
    let candidates: Box<dyn Iterator<Item = &Vec<Value>>> = match &table.hash {
        Some(hash) => {
            let key = join_key(
                source
                    .hash_keys
                    .iter()
                    .map(|(left, _)| left.eval(row, params)),
            )?;
            match key.and_then(|k| hash.get(&k)) {
                Some(hits) => Box::new(hits.iter().map(|&i| &table.rows[i])),
                None => Box::new(std::iter::empty()),
            }
        }
        None => Box::new(table.rows.iter()),
    };
    let mut matched = false;
    for right in candidates {
        let mut combined = Vec::with_capacity(row.len() + right.len());
        combined.extend(row.iter().cloned());
        combined.extend(right.iter().cloned());
        if let Some(on) = &source.on {
            if !on.eval_condition(&combined, params)? {
                continue;
            }
        }
        matched = true;
        if !join_rows(plan, joined, level + 1, &combined, params, sink)? {
            return Ok(false);
        }
    }
    if !matched && source.join == JoinKind::Left {
        let mut combined = row.to_vec();
        combined.resize(combined.len() + source.schema.columns.len(), Value::Null);
        return join_rows(plan, joined, level + 1, &combined, params, sink);
    }
    Ok(true)
}

/// Coerces and checks a row about to be stored.
fn check_row(schema: &TableSchema, row: &mut [Value]) -> Result<()> {
    for (value, column) in row.iter_mut().zip(&schema.columns) {
        let v = std::mem::replace(value, Value::Null).coerce_to(column.ty)?;
        check_constraints(schema, column, &v)?;
        *value = v;
    }
    Ok(())
}

/// NOT NULL and VARCHAR(n) of one value already of the column's type.
fn check_constraints(
    schema: &TableSchema,
    column: &crate::catalog::ColumnDef,
    value: &Value,
) -> Result<()> {
    if value.is_null() && column.not_null {
        return Err(QueryError::sql(
            "23502",
            format!(
                "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                column.name, schema.name
            ),
        ));
    }
    if let (Value::Text(s), Some(max)) = (value, column.max_chars) {
        // Bytes bound characters from above: most values skip the count.
        if s.len() > max as usize && s.chars().count() > max as usize {
            return Err(QueryError::sql(
                "22001",
                format!("value too long for type character varying({max})"),
            ));
        }
    }
    Ok(())
}

/// [`check_row`] for one borrowed value: converted (copied) only when its
/// type is not the column's.
fn check_cow<'a>(
    schema: &TableSchema,
    column: &crate::catalog::ColumnDef,
    value: std::borrow::Cow<'a, Value>,
) -> Result<std::borrow::Cow<'a, Value>> {
    let value = match value.data_type() {
        None => value,
        Some(ty) if ty == column.ty => value,
        Some(_) => std::borrow::Cow::Owned(value.into_owned().coerce_to(column.ty)?),
    };
    check_constraints(schema, column, &value)?;
    Ok(value)
}

fn primary_key(schema: &TableSchema, row: &[Value]) -> Vec<u8> {
    let values: Vec<Value> = schema.primary_key.iter().map(|&c| row[c].clone()).collect();
    encode_key(&values)
}

fn describe_key(schema: &TableSchema, columns: &[usize], row: &[Value]) -> String {
    let names: Vec<&str> = columns
        .iter()
        .map(|&c| schema.columns[c].name.as_str())
        .collect();
    let values: Vec<String> = columns.iter().map(|&c| row[c].to_string()).collect();
    format!(
        "Key ({})=({}) already exists.",
        names.join(", "),
        values.join(", ")
    )
}

/// The index entry of a row: `(index values)` when unique and not NULL,
/// else `(index values) ‖ primary key`; the entry's value is the primary key.
fn index_entry(def: &IndexDef, row: &[Value], pk: &[u8]) -> Vec<u8> {
    let values: Vec<Value> = def.columns.iter().map(|&c| row[c].clone()).collect();
    let mut key = encode_key(&values);
    if !def.unique || values.iter().any(Value::is_null) {
        key.extend_from_slice(pk);
    }
    key
}

/// One row change of a statement: (primary key, row) before and after.
/// An UPDATE keeps the old row's values only when the table has an index
/// (nothing else reads them); a DELETE keeps them only for an index or
/// RETURNING (else just the filter's columns).
struct Change {
    old: Option<(Vec<u8>, Vec<Value>)>,
    new: Option<(Vec<u8>, Vec<Value>)>,
}

impl Change {
    /// Whether the change moves or rewrites the row's entry in `def`.
    fn touches(&self, def: &IndexDef) -> bool {
        match (&self.old, &self.new) {
            (Some((ok, old)), Some((nk, new))) => {
                ok != nk || def.columns.iter().any(|&c| old[c] != new[c])
            }
            _ => true,
        }
    }

    fn moves_key(&self) -> bool {
        match (&self.old, &self.new) {
            (Some((ok, _)), Some((nk, _))) => ok != nk,
            _ => true,
        }
    }
}

fn duplicate(
    constraint: &str,
    schema: &TableSchema,
    columns: &[usize],
    row: &[Value],
) -> QueryError {
    QueryError::sql(
        "23505",
        format!(
            "duplicate key value violates unique constraint \"{constraint}\" ({})",
            describe_key(schema, columns, row)
        ),
    )
}

/// Applies a statement's changes: every removal first, then every insert,
/// so uniqueness holds for the statement as a whole. Each engine table is
/// opened once per phase. Old rows were read by this statement, so their
/// keys are written as known present (no second lookup in the engine).
fn apply_changes(tx: &mut Transaction, schema: &TableSchema, changes: &[Change]) -> Result<()> {
    for def in &schema.indexes {
        let mut index = tx.open_table(&schema.index_table(def))?;
        for change in changes.iter().filter(|c| c.touches(def)) {
            if let Some((pk, row)) = &change.old {
                index.remove(&index_entry(def, row, pk))?;
            }
        }
    }
    let data_name = schema.data_table();
    {
        let mut data = tx.open_table(&data_name)?;
        for change in changes.iter().filter(|c| c.moves_key()) {
            if let (Some((pk, _)), _) = (&change.old, &change.new) {
                data.remove_known(pk)?;
            }
        }
        let mut encoded = Vec::with_capacity(INITIAL_ROW_BYTES);
        for change in changes {
            if let Some((pk, row)) = &change.new {
                encoded.clear();
                encode_row_into(row.iter(), row.len(), &mut encoded);
                if !change.moves_key() {
                    data.overwrite_known(pk, &encoded)?;
                } else if data.insert(pk, &encoded)?.is_some() {
                    let constraint = format!("{}_pkey", schema.name);
                    return Err(duplicate(&constraint, schema, &schema.primary_key, row));
                }
            }
        }
    }
    for def in &schema.indexes {
        let mut index = tx.open_table(&schema.index_table(def))?;
        for change in changes.iter().filter(|c| c.touches(def)) {
            if let Some((pk, row)) = &change.new {
                let previous = index.insert(&index_entry(def, row, pk), pk)?;
                if previous.is_some_and(|p| *p != **pk) {
                    return Err(duplicate(&def.name, schema, &def.columns, row));
                }
            }
        }
    }
    Ok(())
}

/// Fills a new index from the table's rows (CREATE INDEX).
pub fn build_index(tx: &mut Transaction, schema: &TableSchema, def: &IndexDef) -> Result<()> {
    let mut rows = Vec::new();
    let source = full_scan_source(schema);
    scan_source(tx, &source, &[], &mut |key, row| {
        rows.push((key.to_vec(), std::mem::take(row)));
        Ok(true)
    })?;
    let mut index = tx.open_table(&schema.index_table(def))?;
    for (pk, row) in rows {
        let key = index_entry(def, &row, &pk);
        if index.insert(&key, &pk)?.is_some() {
            return Err(QueryError::sql(
                "23505",
                format!(
                    "could not create unique index \"{}\" ({})",
                    def.name,
                    describe_key(schema, &def.columns, &row)
                        .replace("already exists", "is duplicated")
                ),
            ));
        }
    }
    Ok(())
}

/// A source reading every row of a table.
pub fn full_scan_source(schema: &TableSchema) -> Source {
    Source {
        schema: schema.clone(),
        alias: schema.name.clone(),
        offset: 0,
        join: JoinKind::Inner,
        on: None,
        hash_keys: Vec::new(),
        filter: Vec::new(),
        access: Access::FullScan,
        reverse: false,
        needed: None,
        implied: Vec::new(),
        derived: None,
    }
}

/// The next hidden rowid: one past the largest key.
/// Reserves `count` hidden rowids: past the largest key this transaction
/// sees and past every rowid this process handed out for the table (a
/// database is open in one process at a time), so concurrent inserts
/// never pick the same rowid, whatever their isolation level.
fn reserve_rowids(tx: &mut Transaction, schema: &TableSchema, count: usize) -> Result<i64> {
    static HANDED_OUT: std::sync::Mutex<Option<HashMap<String, i64>>> = std::sync::Mutex::new(None);
    let data_table = schema.data_table();
    let last = tx.open_table(&data_table)?.last()?;
    let after_last = match last {
        None => 1,
        Some((key, _)) => match decode_key(&key)?.as_slice() {
            [Value::Integer(i)] => i
                .checked_add(1)
                .ok_or_else(|| QueryError::out_of_range("rowid out of range"))?,
            _ => {
                return Err(QueryError::corrupted(format!(
                    "rowid key of {} is not an integer",
                    schema.name
                )))
            }
        },
    };
    let mut guard = match HANDED_OUT.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    let next = guard
        .get_or_insert_with(HashMap::new)
        .entry(data_table)
        .or_insert(1);
    let first = (*next).max(after_last);
    *next = i64::try_from(count)
        .ok()
        .and_then(|n| first.checked_add(n))
        .ok_or_else(|| QueryError::out_of_range("rowid out of range"))?;
    Ok(first)
}

fn returning_rows(returning: &Returning, rows: &[Vec<Value>], params: &[Value]) -> Result<RowSet> {
    let out = rows
        .iter()
        .map(|row| {
            returning
                .exprs
                .iter()
                .map(|e| e.eval(row, params))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    Ok((returning.names.clone(), out))
}

/// Runs an INSERT; returns the row count and the RETURNING rows.
pub fn run_insert(
    tx: &mut Transaction,
    plan: &InsertPlan,
    params: &[Value],
) -> Result<(u64, Option<RowSet>)> {
    let schema = &plan.table;
    if let Some(direct) = &plan.direct {
        return Ok((direct.run(tx, schema, &plan.data_table, params)?, None));
    }
    if let InsertSource::Values(rows) = &plan.source {
        if plan.returning.is_none() && schema.indexes.is_empty() {
            return Ok((insert_values_direct(tx, plan, rows, params)?, None));
        }
    }
    let sources: Vec<Vec<Option<Value>>> = match &plan.source {
        InsertSource::Values(rows) => rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|e| e.as_ref().map(|e| e.eval(&[], params)).transpose())
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?,
        InsertSource::Select(select) => run_select(tx, select, params)?
            .1
            .into_iter()
            .map(|row| row.into_iter().map(Some).collect())
            .collect(),
    };
    let mut next_id = if schema.has_rowid() && !sources.is_empty() {
        Some(reserve_rowids(tx, schema, sources.len())?)
    } else {
        None
    };
    let mut changes = Vec::with_capacity(sources.len());
    for source in sources {
        let mut row: Vec<Value> = schema.columns.iter().map(|c| c.default.clone()).collect();
        for (&column, value) in plan.columns.iter().zip(source) {
            if let Some(value) = value {
                row[column] = value;
            }
        }
        check_row(schema, &mut row)?;
        let key = match &mut next_id {
            Some(id) => {
                let key = encode_key(&[Value::Integer(*id)]);
                *id = id
                    .checked_add(1)
                    .ok_or_else(|| QueryError::out_of_range("rowid out of range"))?;
                key
            }
            None => primary_key(schema, &row),
        };
        changes.push(Change {
            old: None,
            new: Some((key, row)),
        });
    }
    apply_changes(tx, schema, &changes)?;
    let count = changes.len() as u64;
    let inserted: Vec<Vec<Value>> = if plan.returning.is_some() {
        changes
            .into_iter()
            .filter_map(|c| c.new.map(|(_, row)| row))
            .collect()
    } else {
        Vec::new()
    };
    let returning = plan
        .returning
        .as_ref()
        .map(|r| returning_rows(r, &inserted, params))
        .transpose()?;
    Ok((count, returning))
}

/// NULL, to borrow.
static NULL: Value = Value::Null;

/// Starting capacity of the reused key buffer of a write.
const INITIAL_KEY_BYTES: usize = 64;

/// Starting capacity of the reused row buffer of a write.
const INITIAL_ROW_BYTES: usize = 256;

/// Columns of a row [`insert_values_direct`] evaluates on the stack; wider
/// tables use a list allocated per statement.
const INLINE_COLUMNS: usize = 16;

/// Key and row buffers of [`insert_values_direct`], kept per thread from
/// statement to statement (a prepared INSERT run a million times in one
/// transaction allocates them once).
#[derive(Default)]
struct InsertScratch {
    key: Vec<u8>,
    encoded: Vec<u8>,
}

thread_local! {
    static INSERT_SCRATCH: std::cell::Cell<InsertScratch> = std::cell::Cell::new(InsertScratch::default());
}

/// INSERT ... VALUES into a table without indexes, without RETURNING: each
/// row is evaluated (borrowing parameters and literals), checked and
/// encoded into reused buffers, then written; no row of owned values is
/// built. Rows are written one by one, so a duplicate key is reported at
/// the first row that repeats one (as PostgreSQL does).
fn insert_values_direct(
    tx: &mut Transaction,
    plan: &InsertPlan,
    rows: &[Vec<Option<Expr>>],
    params: &[Value],
) -> Result<u64> {
    use std::borrow::Cow;
    let schema = &plan.table;
    debug_assert!(schema.indexes.is_empty());
    debug_assert_eq!(plan.data_table, schema.data_table());
    let mut next_id = match schema.has_rowid() && !rows.is_empty() {
        true => Some(reserve_rowids(tx, schema, rows.len())?),
        false => None,
    };
    let width = schema.columns.len();
    let mut data = tx.open_table(&plan.data_table)?;
    let mut inline: [Cow<'_, Value>; INLINE_COLUMNS] =
        std::array::from_fn(|_| Cow::Borrowed(&NULL));
    let mut spilled: Vec<Cow<'_, Value>>;
    let values: &mut [Cow<'_, Value>] = match inline.get_mut(..width) {
        Some(values) => values,
        None => {
            spilled = vec![Cow::Borrowed(&NULL); width];
            &mut spilled
        }
    };
    // Taken out of the thread's slot (a nested use finds fresh buffers).
    let mut scratch = INSERT_SCRATCH.take();
    scratch.key.reserve(INITIAL_KEY_BYTES);
    scratch.encoded.reserve(INITIAL_ROW_BYTES);
    let result = (|| {
        for row in rows {
            insert_one_row(
                &mut data,
                plan,
                row,
                params,
                values,
                &mut next_id,
                &mut scratch,
            )?;
        }
        Ok(rows.len() as u64)
    })();
    scratch.key.clear();
    scratch.encoded.clear();
    INSERT_SCRATCH.set(scratch);
    result
}

/// One row of [`insert_values_direct`]: evaluated into `values` (one slot
/// per table column), checked, keyed, encoded and written.
fn insert_one_row<'a>(
    data: &mut mmsb_engine::Table<'_>,
    plan: &'a InsertPlan,
    row: &'a [Option<Expr>],
    params: &'a [Value],
    values: &mut [std::borrow::Cow<'a, Value>],
    next_id: &mut Option<i64>,
    scratch: &mut InsertScratch,
) -> Result<()> {
    use std::borrow::Cow;
    let schema = &plan.table;
    for (slot, column) in values.iter_mut().zip(&schema.columns) {
        *slot = Cow::Borrowed(&column.default);
    }
    for (&column, e) in plan.columns.iter().zip(row) {
        if let (Some(e), Some(slot)) = (e, values.get_mut(column)) {
            *slot = e.eval_cow(&[], params)?;
        }
    }
    for (value, column) in values.iter_mut().zip(&schema.columns) {
        let taken = std::mem::replace(value, Cow::Borrowed(&NULL));
        *value = check_cow(schema, column, taken)?;
    }
    let key = &mut scratch.key;
    key.clear();
    match next_id {
        Some(id) => {
            encode_key_value(&Value::Integer(*id), key);
            *id = id
                .checked_add(1)
                .ok_or_else(|| QueryError::out_of_range("rowid out of range"))?;
        }
        None => {
            for &c in &schema.primary_key {
                let value = values
                    .get(c)
                    .ok_or_else(|| QueryError::corrupted(format!("no primary key column {c}")))?;
                encode_key_value(value, key);
            }
        }
    }
    let encoded = &mut scratch.encoded;
    encoded.clear();
    encode_row_into(values.iter().map(|v| &**v), values.len(), encoded);
    if data.insert(key, encoded)?.is_some() {
        let row: Vec<Value> = values.iter().map(|v| v.as_ref().clone()).collect();
        let constraint = format!("{}_pkey", schema.name);
        return Err(duplicate(&constraint, schema, &schema.primary_key, &row));
    }
    Ok(())
}

/// Collects (key, row) of the rows a statement's source and WHERE select.
/// A row is tested on its encoded bytes, or on just the columns the
/// filter reads, and decoded whole only when it passes and `full_rows`
/// (else its row is left empty: nothing reads it).
fn matching_rows(
    tx: &mut Transaction,
    source: &Source,
    params: &[Value],
    full_rows: bool,
) -> Result<Vec<(Vec<u8>, Vec<Value>)>> {
    let mut out = Vec::new();
    if source.derived.is_some() {
        scan_source(tx, source, params, &mut |key, row| {
            out.push((key.to_vec(), std::mem::take(row)));
            Ok(true)
        })?;
        return Ok(out);
    }
    let schema = &source.schema;
    let range = key_range(tx, source, params)?;
    let filter = RowFilter::new(source, &range, params);
    let mut scratch = Vec::with_capacity(schema.columns.len());
    visit_entries(tx, source, range, &mut |key, bytes| {
        if filter.passes(schema, bytes, params, &mut scratch)? {
            let mut row = Vec::new();
            if full_rows {
                decode_stored_row(schema, bytes, None, &mut row)?;
            }
            out.push((key.to_vec(), row));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Keys and rows a statement writes, packed in one buffer (no allocation
/// per row).
#[derive(Default)]
struct EntryArena {
    bytes: Vec<u8>,
    /// Per entry: where its key starts, where its row starts, where it ends.
    entries: Vec<(usize, usize, usize)>,
}

impl EntryArena {
    /// Appends `key`; the caller then appends the row to `bytes` and calls
    /// [`EntryArena::end_row`] with the returned mark.
    fn start_row(&mut self, key: &[u8]) -> (usize, usize) {
        let key_start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        (key_start, self.bytes.len())
    }

    fn end_row(&mut self, (key_start, row_start): (usize, usize)) {
        debug_assert!(key_start <= row_start && row_start <= self.bytes.len());
        self.entries.push((key_start, row_start, self.bytes.len()));
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|&(k, r, e)| (&self.bytes[k..r], &self.bytes[r..e]))
    }
}

/// An UPDATE that [`updates_in_place`] accepts: each matched row gets its
/// assigned columns' new values spliced into its encoding (the rest of the
/// row is copied, not decoded); the assignments read only the columns
/// they name. Returns the row count.
fn update_in_place(tx: &mut Transaction, plan: &UpdatePlan, params: &[Value]) -> Result<u64> {
    let source = &plan.source;
    let schema = &source.schema;
    let mut assignments: Vec<(usize, &Expr)> =
        plan.assignments.iter().map(|(c, e)| (*c, e)).collect();
    assignments.sort_by_key(|&(c, _)| c);
    let columns: Vec<usize> = assignments.iter().map(|&(c, _)| c).collect();
    if columns.windows(2).any(|w| w[0] == w[1])
        || columns.iter().any(|&c| c >= schema.columns.len())
    {
        return Err(QueryError::sql(
            "XX000",
            "internal: UPDATE assigns a column twice or one out of range",
        ));
    }
    let mut read = Vec::new();
    for (_, e) in &assignments {
        e.columns(&mut read);
    }
    let mut read_mask = vec![false; schema.columns.len()];
    for c in read {
        if let Some(slot) = read_mask.get_mut(c) {
            *slot = true;
        }
    }
    let range = key_range(tx, source, params)?;
    let filter = RowFilter::new(source, &range, params);
    let (mut scratch, mut old, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    let mut values = Vec::with_capacity(columns.len());
    let mut written = EntryArena::default();
    visit_entries(tx, source, range, &mut |key, bytes| {
        if !filter.passes(schema, bytes, params, &mut scratch)? {
            return Ok(true);
        }
        decode_stored_row(schema, bytes, Some(&read_mask), &mut old)?;
        values.clear();
        for &(column, e) in &assignments {
            let def = &schema.columns[column];
            let value = e.eval(&old, params)?.coerce_to(def.ty)?;
            check_constraints(schema, def, &value)?;
            values.push(value);
        }
        let mark = written.start_row(key);
        if !splice_row(bytes, &columns, &values, &mut written.bytes)? {
            // The row predates an assigned column: re-encode it whole.
            decode_stored_row(schema, bytes, None, &mut whole)?;
            for (&column, value) in columns.iter().zip(values.drain(..)) {
                whole[column] = value;
            }
            encode_row_into(whole.iter(), whole.len(), &mut written.bytes);
        }
        written.end_row(mark);
        Ok(true)
    })?;
    let mut data = tx.open_table(&schema.data_table())?;
    for (key, row) in written.iter() {
        data.overwrite_known(key, row)?;
    }
    Ok(written.entries.len() as u64)
}

/// Runs an UPDATE; returns the row count and the RETURNING rows.
pub fn run_update(
    tx: &mut Transaction,
    plan: &UpdatePlan,
    params: &[Value],
) -> Result<(u64, Option<RowSet>)> {
    if updates_in_place(plan) {
        return Ok((update_in_place(tx, plan, params)?, None));
    }
    let schema = &plan.source.schema;
    let matches = matching_rows(tx, &plan.source, params, true)?;
    // Only index maintenance reads the old row after the new one is made.
    let keep_old = !schema.indexes.is_empty();
    let moves_key = !schema.has_rowid()
        && plan
            .assignments
            .iter()
            .any(|(c, _)| schema.primary_key.contains(c));
    let mut changes = Vec::with_capacity(matches.len());
    let mut assigned = Vec::with_capacity(plan.assignments.len());
    for (key, old) in matches {
        assigned.clear();
        for (_, e) in &plan.assignments {
            assigned.push(e.eval(&old, params)?);
        }
        let (old, mut new) = if keep_old {
            (old.clone(), old)
        } else {
            (Vec::new(), old)
        };
        for ((column, _), value) in plan.assignments.iter().zip(assigned.drain(..)) {
            new[*column] = value;
        }
        check_row(schema, &mut new)?;
        let new_key = if moves_key {
            primary_key(schema, &new)
        } else {
            key.clone()
        };
        changes.push(Change {
            old: Some((key, old)),
            new: Some((new_key, new)),
        });
    }
    apply_changes(tx, schema, &changes)?;
    changed_rows(changes, plan.returning.as_ref(), params, |c| c.new)
}

/// Runs a DELETE; returns the row count and the RETURNING rows.
pub fn run_delete(
    tx: &mut Transaction,
    plan: &DeletePlan,
    params: &[Value],
) -> Result<(u64, Option<RowSet>)> {
    let schema = &plan.source.schema;
    // Rows are read whole only when an index or RETURNING needs them.
    let full_rows = plan.returning.is_some() || !plan.source.schema.indexes.is_empty();
    let changes: Vec<Change> = matching_rows(tx, &plan.source, params, full_rows)?
        .into_iter()
        .map(|old| Change {
            old: Some(old),
            new: None,
        })
        .collect();
    apply_changes(tx, schema, &changes)?;
    changed_rows(changes, plan.returning.as_ref(), params, |c| c.old)
}

/// The row count of applied changes and, with RETURNING, the rows it names
/// (`side` picks the new rows of an UPDATE or the old rows of a DELETE).
fn changed_rows(
    changes: Vec<Change>,
    returning: Option<&Returning>,
    params: &[Value],
    side: impl Fn(Change) -> Option<(Vec<u8>, Vec<Value>)>,
) -> Result<(u64, Option<RowSet>)> {
    let count = changes.len() as u64;
    let rows = returning
        .map(|r| {
            let rows: Vec<Vec<Value>> = changes
                .into_iter()
                .filter_map(|c| side(c).map(|(_, row)| row))
                .collect();
            returning_rows(r, &rows, params)
        })
        .transpose()?;
    Ok((count, rows))
}

/// Rows of each subquery, in order.
pub type SubqueryResults = Vec<Vec<Vec<Value>>>;

/// Replaces subquery references in `e` by their results.
fn substitute(e: Expr, results: &SubqueryResults) -> Result<Expr> {
    let rows = |i: usize| {
        results
            .get(i)
            .ok_or_else(|| QueryError::sql("XX000", format!("internal: subquery {i} has not run")))
    };
    e.rewrite(&mut |node| {
        Ok(match node {
            Expr::Subquery(i) => Some(Expr::Literal(match rows(*i)?.as_slice() {
                [] => Value::Null,
                [row] => row.first().cloned().unwrap_or(Value::Null),
                _ => {
                    return Err(QueryError::sql(
                        "21000",
                        "more than one row returned by a subquery used as an expression",
                    ))
                }
            })),
            Expr::Exists(i) => Some(Expr::Literal(Value::Boolean(!rows(*i)?.is_empty()))),
            Expr::InSubquery {
                expr,
                index,
                negated,
            } => Some(Expr::InList {
                expr: Box::new(substitute((**expr).clone(), results)?),
                list: rows(*index)?
                    .iter()
                    .map(|row| Expr::Literal(row.first().cloned().unwrap_or(Value::Null)))
                    .collect(),
                negated: *negated,
            }),
            _ => None,
        })
    })
}

fn substitute_in_place(e: &mut Expr, results: &SubqueryResults) -> Result<()> {
    if crate::plan::has_subquery(e) {
        let taken = std::mem::replace(e, Expr::Literal(Value::Null));
        *e = substitute(taken, results)?;
    }
    Ok(())
}

/// Runs a statement's subqueries (each sees the results of those before it)
/// and returns the plan with their results in place of the references.
pub fn with_subqueries(
    tx: &mut Transaction,
    plan: &Plan,
    subqueries: &[SelectPlan],
    params: &[Value],
) -> Result<Plan> {
    let mut results: SubqueryResults = Vec::with_capacity(subqueries.len());
    for sub in subqueries {
        let mut sub = Plan::Select(sub.clone());
        crate::plan::plan_exprs_mut(&mut sub, &mut |e| substitute_in_place(e, &results))?;
        crate::plan::replan_access(&mut sub);
        let Plan::Select(sub) = sub else {
            return Err(QueryError::sql(
                "XX000",
                "internal: subquery is not a SELECT",
            ));
        };
        results.push(run_select(tx, &sub, params)?.1);
    }
    let mut plan = plan.clone();
    crate::plan::plan_exprs_mut(&mut plan, &mut |e| substitute_in_place(e, &results))?;
    crate::plan::replan_access(&mut plan);
    Ok(plan)
}

#[cfg(test)]
mod encoded_path_tests {
    //! The paths that work on encoded rows (aggregates accumulated in
    //! place, filters decided on the bytes, UPDATE splicing new values in)
    //! against the general paths as the model: the same statement in a
    //! shape that takes the general path (`v + 0` instead of `v`,
    //! `RETURNING` on an UPDATE) must give the same result.

    use proptest::prelude::*;

    use crate::{Connection, Value};

    fn connect() -> Connection {
        crate::test_db::memory_connection("/encoded/db.mmsb")
    }

    fn rows(c: &mut Connection, sql: &str) -> Vec<Vec<Value>> {
        c.query(sql, &[])
            .expect(sql)
            .iter()
            .map(|r| r.values().to_vec())
            .collect()
    }

    fn literal(v: &Option<i64>) -> String {
        v.map_or_else(|| "NULL".to_owned(), |i| i.to_string())
    }

    /// Two equal tables `a` and `b` of `(id, g, v, r, s)`; rows after
    /// `early` get a column `w` the earlier ones predate.
    fn load(c: &mut Connection, data: &[(Option<i64>, Option<i64>)], early: usize) {
        for t in ["a", "b"] {
            c.execute(&format!(
                "CREATE TABLE {t} (id INTEGER PRIMARY KEY, g INTEGER, v INTEGER, r REAL, s TEXT)"
            ))
            .expect("create");
            for (i, (g, v)) in data.iter().enumerate() {
                if i == early {
                    c.execute(&format!("ALTER TABLE {t} ADD COLUMN w INTEGER DEFAULT 5"))
                        .expect("add column");
                }
                c.execute(&format!(
                    "INSERT INTO {t} (id, g, v, r, s) VALUES ({i}, {}, {}, {i}.5, 'row {i}')",
                    literal(g),
                    literal(v)
                ))
                .expect("insert");
            }
            if early >= data.len() {
                c.execute(&format!("ALTER TABLE {t} ADD COLUMN w INTEGER DEFAULT 5"))
                    .expect("add column");
            }
        }
    }

    fn small() -> impl Strategy<Value = Option<i64>> {
        proptest::option::weighted(0.85, -20i64..20)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn encoded_aggregates_match_the_general_path(
            data in proptest::collection::vec((small(), small()), 0..24),
            early in 0usize..24,
            lo in -2i64..20,
            width in 0i64..20,
            k in 2i64..5,
        ) {
            let mut c = connect();
            load(&mut c, &data, early);
            let hi = lo + width;
            for (fast, slow) in [
                ("count(*), sum(v), count(v), avg(v), min(v), max(v), sum(w), sum(r), max(s)",
                 "count(*), sum(v + 0), count(v + 0), avg(v + 0), min(v + 0), max(v + 0), \
                  sum(w + 0), sum(r + 0), max(s || '')"),
            ] {
                for filter in [
                    format!("id BETWEEN {lo} AND {hi}"),
                    format!("id >= {lo} AND g % {k} = 1"),
                    format!("v > {lo} AND g <> {hi}"),
                    format!("w = 5 OR v < {lo}"),
                    format!("{lo} > v"),
                    "s LIKE 'row 1%'".to_owned(),
                ] {
                    let want = rows(&mut c, &format!("SELECT {slow} FROM a WHERE {filter}"));
                    let got = rows(&mut c, &format!("SELECT {fast} FROM a WHERE {filter}"));
                    prop_assert_eq!(got, want, "WHERE {}", filter);
                }
            }
        }

        #[test]
        fn updates_in_place_match_the_general_path(
            data in proptest::collection::vec((small(), small()), 0..24),
            early in 0usize..24,
            k in 2i64..5,
            m in 0i64..4,
            set in 0usize..5,
        ) {
            let mut c = connect();
            load(&mut c, &data, early);
            let assignment = [
                "v = v + 1",
                "w = g, v = 7",
                "s = s || '!', r = v",
                "g = NULL, w = w * 2",
                "r = 2",
            ][set];
            let filter = format!("id % {k} = {m} OR v IS NULL");
            let fast = c.execute(&format!("UPDATE a SET {assignment} WHERE {filter}"));
            let slow = c.execute(&format!("UPDATE b SET {assignment} WHERE {filter} RETURNING id"));
            prop_assert_eq!(
                fast.map(|r| r[0].affected).map_err(|e| e.to_string()),
                slow.map(|r| r[0].affected).map_err(|e| e.to_string())
            );
            let a = rows(&mut c, "SELECT * FROM a ORDER BY id");
            let b = rows(&mut c, "SELECT * FROM b ORDER BY id");
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn an_update_in_place_checks_types_and_constraints() {
        let mut c = connect();
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, s VARCHAR(2))")
            .expect("create");
        c.execute("INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b')")
            .expect("insert");
        let err = |c: &mut Connection, sql: &str| {
            c.execute(sql).map(|_| ()).map_err(|e| e.sqlstate()).err()
        };
        assert_eq!(
            err(&mut c, "UPDATE t SET n = NULL WHERE id = 2"),
            Some("23502")
        );
        assert_eq!(err(&mut c, "UPDATE t SET s = 'abc'"), Some("22001"));
        assert_eq!(err(&mut c, "UPDATE t SET n = 'x'"), Some("22P02"));
        c.execute("UPDATE t SET n = '40', s = 7 WHERE id % 2 = 0")
            .expect("coerced update");
        assert_eq!(
            rows(&mut c, "SELECT * FROM t ORDER BY id"),
            vec![
                vec![
                    Value::Integer(1),
                    Value::Integer(1),
                    Value::Text("a".into())
                ],
                vec![
                    Value::Integer(2),
                    Value::Integer(40),
                    Value::Text("7".into())
                ],
            ]
        );
    }
}
