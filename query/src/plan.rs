//! Query plans: what the binder produces and the executor runs, the choice
//! of access path per table (primary-key point get or range scan, secondary
//! index scan, or full scan) from the predicates on it, and EXPLAIN's text.

use crate::catalog::TableSchema;
use crate::error::Result;
use crate::expr::{BinOp, Expr};

/// How a FROM item joins the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// The first table, an inner join or a cross join.
    Inner,
    /// LEFT [OUTER] JOIN.
    Left,
}

/// A bound on the column after an equality prefix: (value, inclusive).
pub type KeyBound = Option<(Expr, bool)>;

/// How rows of one table are found.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// Every row, in primary-key order.
    FullScan,
    /// Primary-key columns: equalities on a prefix, then an optional range
    /// on the next column. A point get when the prefix covers the key.
    Primary {
        /// Values of the leading key columns.
        eq: Vec<Expr>,
        /// Lower bound on the next column.
        lower: KeyBound,
        /// Upper bound on the next column.
        upper: KeyBound,
    },
    /// A single-column primary key IN a list of values: one get each.
    PrimaryIn(Vec<Expr>),
    /// A secondary index: equalities on a prefix, then an optional range.
    Index {
        /// Position in the table's index list.
        index: usize,
        /// Values of the leading index columns.
        eq: Vec<Expr>,
        /// Lower bound on the next column.
        lower: KeyBound,
        /// Upper bound on the next column.
        upper: KeyBound,
    },
}

/// One table of a FROM clause.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its schema.
    pub schema: TableSchema,
    /// The name it is referred to by (alias or table name).
    pub alias: String,
    /// Position of its first column in the joined row.
    pub offset: usize,
    /// How it joins the sources before it.
    pub join: JoinKind,
    /// The ON condition, over the joined row up to and including this source.
    pub on: Option<Expr>,
    /// Equality keys for a hash join: (expression over the joined row so
    /// far, expression over this table's row).
    pub hash_keys: Vec<(Expr, Expr)>,
    /// Conditions on this table alone (over its own row), applied while scanning.
    pub filter: Vec<Expr>,
    /// How its rows are found.
    pub access: Access,
    /// Scan in descending key order (to satisfy ORDER BY ... DESC).
    pub reverse: bool,
    /// Columns the query reads (others are left NULL when decoding);
    /// `None`: all of them.
    pub needed: Option<Vec<bool>>,
    /// Conjuncts of `filter` the primary-key access guarantees (skipped
    /// when the bounds convert exactly).
    pub implied: Vec<usize>,
    /// A subquery in FROM or a CTE: its rows instead of a stored table's.
    pub derived: Option<Box<SelectPlan>>,
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    /// count
    Count,
    /// sum
    Sum,
    /// min
    Min,
    /// max
    Max,
    /// avg
    Avg,
}

/// One aggregate call of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct AggCall {
    /// The function.
    pub func: AggFunc,
    /// Its argument; `None` for `count(*)`.
    pub arg: Option<Expr>,
    /// DISTINCT.
    pub distinct: bool,
}

/// GROUP BY and aggregates: the aggregated row is the group values followed
/// by the aggregate results.
#[derive(Debug, Clone)]
pub struct Aggregation {
    /// The grouping expressions (over the joined row).
    pub group_by: Vec<Expr>,
    /// The aggregate calls.
    pub calls: Vec<AggCall>,
}

/// One ORDER BY key, a column of the projected row.
#[derive(Debug, Clone, Copy)]
pub struct SortKey {
    /// Column of the projected row.
    pub column: usize,
    /// DESC.
    pub desc: bool,
    /// NULLS FIRST.
    pub nulls_first: bool,
}

/// A SELECT.
#[derive(Debug, Clone)]
pub struct SelectPlan {
    /// The FROM tables, joined left to right; empty: one row of no columns.
    pub sources: Vec<Source>,
    /// WHERE, over the joined row.
    pub filter: Option<Expr>,
    /// GROUP BY and aggregates, if any.
    pub aggregate: Option<Aggregation>,
    /// HAVING, over the aggregated row.
    pub having: Option<Expr>,
    /// Output expressions (visible ones, then hidden sort keys).
    pub projection: Vec<Expr>,
    /// Names of the visible output columns.
    pub names: Vec<String>,
    /// SELECT DISTINCT.
    pub distinct: bool,
    /// ORDER BY.
    pub order_by: Vec<SortKey>,
    /// The scan already yields rows in ORDER BY order.
    pub presorted: bool,
    /// LIMIT (constant expression).
    pub limit: Option<Expr>,
    /// OFFSET (constant expression).
    pub offset: Option<Expr>,
    /// UNION / INTERSECT / EXCEPT parts combined, left to right, with this
    /// query's rows; ORDER BY, OFFSET and LIMIT then apply to the result.
    pub set_ops: Vec<(SetOp, SelectPlan)>,
}

/// A set operation between query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOp {
    /// UNION (duplicates removed) or UNION ALL.
    Union {
        /// ALL: keep duplicates.
        all: bool,
    },
    /// INTERSECT [ALL].
    Intersect {
        /// ALL: multiset semantics.
        all: bool,
    },
    /// EXCEPT [ALL].
    Except {
        /// ALL: multiset semantics.
        all: bool,
    },
}

impl SelectPlan {
    /// Number of visible output columns.
    pub fn visible(&self) -> usize {
        self.names.len()
    }
}

/// Where INSERT takes its rows.
#[derive(Debug, Clone)]
pub enum InsertSource {
    /// VALUES rows of constant expressions (`None`: DEFAULT).
    Values(Vec<Vec<Option<Expr>>>),
    /// A query.
    Select(Box<SelectPlan>),
}

/// RETURNING: expressions over the table's row.
#[derive(Debug, Clone)]
pub struct Returning {
    /// The expressions.
    pub exprs: Vec<Expr>,
    /// Their names.
    pub names: Vec<String>,
}

/// An INSERT.
#[derive(Debug, Clone)]
pub struct InsertPlan {
    /// The target table.
    pub table: TableSchema,
    /// The engine table holding its rows ([`TableSchema::data_table`]),
    /// named once when the plan is bound rather than on every run.
    pub data_table: String,
    /// Table positions the source columns go to.
    pub columns: Vec<usize>,
    /// The rows.
    pub source: InsertSource,
    /// RETURNING.
    pub returning: Option<Returning>,
    /// The direct form of a one-row VALUES insert, compiled when bound
    /// (`None`: the general path). Cleared by anything that rewrites the
    /// plan's expressions.
    pub direct: Option<crate::exec::DirectInsert>,
}

/// An UPDATE.
#[derive(Debug, Clone)]
pub struct UpdatePlan {
    /// The table, its access path and filter.
    pub source: Source,
    /// WHERE, over the table's row (its conjuncts are also in
    /// `source.filter`, which is what the scan evaluates).
    pub filter: Option<Expr>,
    /// (column, new value over the old row).
    pub assignments: Vec<(usize, Expr)>,
    /// RETURNING.
    pub returning: Option<Returning>,
}

/// A DELETE.
#[derive(Debug, Clone)]
pub struct DeletePlan {
    /// The table, its access path and filter.
    pub source: Source,
    /// WHERE, over the table's row (its conjuncts are also in
    /// `source.filter`, which is what the scan evaluates).
    pub filter: Option<Expr>,
    /// RETURNING.
    pub returning: Option<Returning>,
}

/// A bound DML statement.
#[derive(Debug, Clone)]
pub enum Plan {
    /// SELECT.
    Select(SelectPlan),
    /// INSERT.
    Insert(InsertPlan),
    /// UPDATE.
    Update(UpdatePlan),
    /// DELETE.
    Delete(DeletePlan),
}

/// Splits a condition into its AND-ed parts.
pub fn conjuncts(expr: &Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::Binary(BinOp::And, a, b) => {
            conjuncts(a, out);
            conjuncts(b, out);
        }
        other => out.push(other.clone()),
    }
}

/// Column constraints found in a table's conditions.
#[derive(Default)]
struct ColumnBounds {
    eq: Option<Expr>,
    lower: KeyBound,
    upper: KeyBound,
    in_list: Option<Vec<Expr>>,
    /// Which conjunct gave each bound.
    eq_src: Option<usize>,
    lower_src: Option<usize>,
    upper_src: Option<usize>,
    in_src: Option<usize>,
}

/// Finds the constraints each column of the table has in `filter`
/// (conditions over the table's own row).
fn column_bounds(filter: &[Expr], column_count: usize) -> Vec<ColumnBounds> {
    let mut bounds: Vec<ColumnBounds> =
        (0..column_count).map(|_| ColumnBounds::default()).collect();
    for (i, cond) in filter.iter().enumerate() {
        match cond {
            Expr::Binary(op, a, b) if op.is_comparison() && *op != BinOp::NotEq => {
                let (column, op, value) = match (&**a, &**b) {
                    (Expr::Column(c), v) if v.is_constant() => (*c, *op, v),
                    (v, Expr::Column(c)) if v.is_constant() => (*c, op.flipped(), v),
                    _ => continue,
                };
                let Some(slot) = bounds.get_mut(column) else {
                    continue;
                };
                match op {
                    BinOp::Eq if slot.eq.is_none() => {
                        slot.eq = Some(value.clone());
                        slot.eq_src = Some(i);
                    }
                    BinOp::Gt | BinOp::GtEq if slot.lower.is_none() => {
                        slot.lower = Some((value.clone(), op == BinOp::GtEq));
                        slot.lower_src = Some(i);
                    }
                    BinOp::Lt | BinOp::LtEq if slot.upper.is_none() => {
                        slot.upper = Some((value.clone(), op == BinOp::LtEq));
                        slot.upper_src = Some(i);
                    }
                    _ => {}
                }
            }
            Expr::Between {
                expr,
                low,
                high,
                negated: false,
            } => {
                if let (Expr::Column(c), true, true) =
                    (&**expr, low.is_constant(), high.is_constant())
                {
                    if let Some(slot) = bounds.get_mut(*c) {
                        if slot.lower.is_none() {
                            slot.lower = Some(((**low).clone(), true));
                            slot.lower_src = Some(i);
                        }
                        if slot.upper.is_none() {
                            slot.upper = Some(((**high).clone(), true));
                            slot.upper_src = Some(i);
                        }
                    }
                }
            }
            Expr::InList {
                expr,
                list,
                negated: false,
            } => {
                if let Expr::Column(c) = &**expr {
                    if list.iter().all(Expr::is_constant) {
                        if let Some(slot) = bounds.get_mut(*c) {
                            if slot.in_list.is_none() {
                                slot.in_list = Some(list.clone());
                                slot.in_src = Some(i);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    bounds
}

/// A candidate path over key columns `columns`: (eq prefix, lower, upper).
fn prefix_path(columns: &[usize], bounds: &[ColumnBounds]) -> (Vec<Expr>, KeyBound, KeyBound) {
    let mut eq = Vec::new();
    for &c in columns {
        match &bounds[c].eq {
            Some(v) => eq.push(v.clone()),
            None => {
                let slot = &bounds[c];
                return (eq, slot.lower.clone(), slot.upper.clone());
            }
        }
    }
    (eq, None, None)
}

/// Chooses the access path for a table given the conditions on it alone.
pub fn choose_access(schema: &TableSchema, filter: &[Expr]) -> Access {
    let bounds = column_bounds(filter, schema.columns.len());
    let score = |eq: usize, ranged: bool, len: usize| -> usize {
        if eq == len {
            1000
        } else {
            10 * eq + 5 * usize::from(ranged)
        }
    };
    let mut best = (0, Access::FullScan);
    if !schema.primary_key.is_empty() {
        let pk = &schema.primary_key;
        let (eq, lower, upper) = prefix_path(pk, &bounds);
        let s = score(eq.len(), lower.is_some() || upper.is_some(), pk.len()) + 1;
        if s > 1 {
            best = (s, Access::Primary { eq, lower, upper });
        } else if let (1, Some(list)) = (pk.len(), &bounds[pk[0]].in_list) {
            best = (900, Access::PrimaryIn(list.clone()));
        }
    }
    for (i, index) in schema.indexes.iter().enumerate() {
        let (eq, lower, upper) = prefix_path(&index.columns, &bounds);
        let full = if index.unique {
            index.columns.len()
        } else {
            usize::MAX
        };
        let s = score(eq.len(), lower.is_some() || upper.is_some(), full);
        if s > best.0 {
            best = (
                s,
                Access::Index {
                    index: i,
                    eq,
                    lower,
                    upper,
                },
            );
        }
    }
    best.1
}

/// The conjuncts of `filter` that a primary-key access path guarantees
/// when its bounds convert exactly to the key type: the scan can skip them.
pub fn implied_conjuncts(schema: &TableSchema, filter: &[Expr], access: &Access) -> Vec<usize> {
    let bounds = column_bounds(filter, schema.columns.len());
    let pk = &schema.primary_key;
    let mut implied = Vec::new();
    match access {
        Access::Primary { eq, lower, upper } => {
            for &c in &pk[..eq.len().min(pk.len())] {
                implied.extend(bounds[c].eq_src);
            }
            if let Some(&next) = pk.get(eq.len()) {
                let slot = &bounds[next];
                let lower_src = slot.lower_src.filter(|_| lower.is_some());
                let upper_src = slot.upper_src.filter(|_| upper.is_some());
                for src in [lower_src, upper_src].into_iter().flatten() {
                    // A BETWEEN is implied only when both of its bounds are used.
                    let both_needed = matches!(filter[src], Expr::Between { .. });
                    if !both_needed || (lower_src == Some(src) && upper_src == Some(src)) {
                        implied.push(src);
                    }
                }
            }
        }
        Access::PrimaryIn(_) => {
            if let Some(&c) = pk.first() {
                implied.extend(bounds[c].in_src);
            }
        }
        _ => {}
    }
    implied.sort_unstable();
    implied.dedup();
    implied
}

impl Access {
    /// Whether the rows come out in primary-key order.
    pub fn in_primary_order(&self) -> bool {
        matches!(self, Access::FullScan | Access::Primary { .. })
    }
}

fn fmt_bound(names: &[String], column: &str, bound: &KeyBound, lower: bool) -> Option<String> {
    bound.as_ref().map(|(e, inclusive)| {
        let op = match (lower, inclusive) {
            (true, true) => ">=",
            (true, false) => ">",
            (false, true) => "<=",
            (false, false) => "<",
        };
        format!("{column} {op} {}", e.display(names))
    })
}

fn fmt_path(
    schema: &TableSchema,
    columns: &[usize],
    eq: &[Expr],
    lower: &KeyBound,
    upper: &KeyBound,
) -> String {
    let names: Vec<String> = Vec::new();
    let mut parts: Vec<String> = eq
        .iter()
        .zip(columns)
        .map(|(e, &c)| format!("{} = {}", schema.columns[c].name, e.display(&names)))
        .collect();
    if let Some(&next) = columns.get(eq.len()) {
        let name = &schema.columns[next].name;
        parts.extend(fmt_bound(&names, name, lower, true));
        parts.extend(fmt_bound(&names, name, upper, false));
    }
    parts.join(" AND ")
}

/// One line describing how a source is read.
pub fn describe_source(source: &Source) -> String {
    let schema = &source.schema;
    let name = if source.alias == schema.name {
        schema.name.clone()
    } else {
        format!("{} AS {}", schema.name, source.alias)
    };
    let direction = if source.reverse { " (reverse)" } else { "" };
    let mut line = match &source.access {
        _ if source.derived.is_some() => format!("Subquery Scan on {}", source.alias),
        Access::FullScan => format!("Seq Scan on {name}{direction}"),
        Access::Primary { eq, lower, upper } if eq.len() == schema.primary_key.len() => {
            format!(
                "Primary Key Get on {name} ({})",
                fmt_path(schema, &schema.primary_key, eq, lower, upper)
            )
        }
        Access::Primary { eq, lower, upper } => format!(
            "Primary Key Range Scan on {name}{direction} ({})",
            fmt_path(schema, &schema.primary_key, eq, lower, upper)
        ),
        Access::PrimaryIn(list) => format!("Primary Key Multi-Get on {name} ({} keys)", list.len()),
        Access::Index {
            index,
            eq,
            lower,
            upper,
        } => {
            let def = &schema.indexes[*index];
            format!(
                "Index Scan using {} on {name} ({})",
                def.name,
                fmt_path(schema, &def.columns, eq, lower, upper)
            )
        }
    };
    if !source.filter.is_empty() {
        let names: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
        let conds: Vec<String> = source
            .filter
            .iter()
            .map(|e| e.display(&names).to_string())
            .collect();
        line.push_str(&format!(" filter: {}", conds.join(" AND ")));
    }
    line
}

/// Column names of the joined row, qualified by source.
pub fn joined_names(sources: &[Source]) -> Vec<String> {
    sources
        .iter()
        .flat_map(|s| {
            s.schema
                .columns
                .iter()
                .map(move |c| format!("{}.{}", s.alias, c.name))
        })
        .collect()
}

/// EXPLAIN's lines for a plan.
pub fn explain(plan: &Plan) -> Vec<String> {
    let mut lines = Vec::new();
    match plan {
        Plan::Select(select) => explain_select(select, 0, &mut lines),
        Plan::Insert(insert) => {
            lines.push(format!("Insert on {}", insert.table.name));
            match &insert.source {
                InsertSource::Values(rows) => lines.push(format!("  Values ({} rows)", rows.len())),
                InsertSource::Select(select) => explain_select(select, 1, &mut lines),
            }
        }
        Plan::Update(update) => {
            lines.push(format!("Update on {}", update.source.schema.name));
            lines.push(format!("  {}", describe_source(&update.source)));
        }
        Plan::Delete(delete) => {
            lines.push(format!("Delete on {}", delete.source.schema.name));
            lines.push(format!("  {}", describe_source(&delete.source)));
        }
    }
    lines
}

fn explain_select(plan: &SelectPlan, depth: usize, lines: &mut Vec<String>) {
    let pad = |d: usize| "  ".repeat(d);
    let mut d = depth;
    if !plan.set_ops.is_empty() {
        if plan.limit.is_some() || plan.offset.is_some() {
            lines.push(format!("{}Limit", pad(d)));
            d += 1;
        }
        if !plan.order_by.is_empty() {
            lines.push(format!("{}Sort", pad(d)));
            d += 1;
        }
        let head = SelectPlan {
            set_ops: Vec::new(),
            order_by: Vec::new(),
            limit: None,
            offset: None,
            ..plan.clone()
        };
        lines.push(format!("{}Set Operation", pad(d)));
        explain_select(&head, d + 1, lines);
        for (op, part) in &plan.set_ops {
            lines.push(format!("{}{op:?}", pad(d + 1)));
            explain_select(part, d + 2, lines);
        }
        return;
    }
    if plan.limit.is_some() || plan.offset.is_some() {
        lines.push(format!("{}Limit", pad(d)));
        d += 1;
    }
    if !plan.order_by.is_empty() && !plan.presorted {
        lines.push(format!("{}Sort", pad(d)));
        d += 1;
    }
    if plan.distinct {
        lines.push(format!("{}Distinct", pad(d)));
        d += 1;
    }
    lines.push(format!("{}Project [{}]", pad(d), plan.names.join(", ")));
    d += 1;
    if let Some(agg) = &plan.aggregate {
        let kind = if agg.group_by.is_empty() {
            "Aggregate"
        } else {
            "Hash Aggregate"
        };
        let having = if plan.having.is_some() {
            " (having)"
        } else {
            ""
        };
        lines.push(format!("{}{kind}{having}", pad(d)));
        d += 1;
    }
    let names = joined_names(&plan.sources);
    if let Some(filter) = &plan.filter {
        lines.push(format!("{}Filter {}", pad(d), filter.display(&names)));
        d += 1;
    }
    if !plan.sources.is_empty() {
        explain_join(&plan.sources, plan.sources.len() - 1, d, lines);
    }
    if plan.sources.is_empty() {
        lines.push(format!("{}Result (one row)", pad(d)));
    }
}

/// Prints the left-deep join tree ending at `sources[k]`.
fn explain_join(sources: &[Source], k: usize, depth: usize, lines: &mut Vec<String>) {
    let pad = "  ".repeat(depth);
    if k == 0 {
        lines.push(format!("{pad}{}", describe_source(&sources[0])));
        return;
    }
    let source = &sources[k];
    let kind = match (source.join, source.hash_keys.is_empty()) {
        (JoinKind::Inner, false) => "Hash Join",
        (JoinKind::Left, false) => "Hash Left Join",
        (JoinKind::Inner, true) => "Nested Loop",
        (JoinKind::Left, true) => "Nested Loop Left Join",
    };
    lines.push(format!("{pad}{kind}"));
    explain_join(sources, k - 1, depth + 1, lines);
    lines.push(format!("{pad}  {}", describe_source(source)));
}

/// Records, per source, the columns a SELECT reads, so scans decode only those.
pub fn prune_columns(plan: &mut SelectPlan) {
    let width = plan
        .sources
        .iter()
        .map(|s| s.offset + s.schema.columns.len())
        .max()
        .unwrap_or(0);
    let mut joined = Vec::new();
    let mut exprs: Vec<&Expr> = plan.filter.iter().collect();
    match &plan.aggregate {
        Some(agg) => {
            exprs.extend(&agg.group_by);
            exprs.extend(agg.calls.iter().filter_map(|c| c.arg.as_ref()));
        }
        None => exprs.extend(&plan.projection),
    }
    for source in &plan.sources {
        exprs.extend(source.on.iter());
        exprs.extend(source.hash_keys.iter().map(|(left, _)| left));
    }
    for e in exprs {
        e.columns(&mut joined);
    }
    let mut needed_joined = vec![false; width];
    for c in joined {
        if let Some(slot) = needed_joined.get_mut(c) {
            *slot = true;
        }
    }
    for source in &mut plan.sources {
        let n = source.schema.columns.len();
        let mut needed = needed_joined[source.offset..source.offset + n].to_vec();
        let mut local = Vec::new();
        for e in source
            .filter
            .iter()
            .chain(source.hash_keys.iter().map(|(_, right)| right))
        {
            e.columns(&mut local);
        }
        for c in local {
            if let Some(slot) = needed.get_mut(c) {
                *slot = true;
            }
        }
        source.needed = Some(needed);
    }
}

/// Calls `f` on every expression of a source.
fn source_exprs_mut(source: &mut Source, f: &mut dyn FnMut(&mut Expr) -> Result<()>) -> Result<()> {
    if let Some(derived) = &mut source.derived {
        select_exprs_mut(derived, f)?;
    }
    for e in source.filter.iter_mut().chain(source.on.iter_mut()) {
        f(e)?;
    }
    for (left, right) in &mut source.hash_keys {
        f(left)?;
        f(right)?;
    }
    Ok(())
}

/// Calls `f` on every expression of a SELECT (not of its subqueries).
pub fn select_exprs_mut(
    plan: &mut SelectPlan,
    f: &mut dyn FnMut(&mut Expr) -> Result<()>,
) -> Result<()> {
    for (_, part) in &mut plan.set_ops {
        select_exprs_mut(part, f)?;
    }
    for source in &mut plan.sources {
        source_exprs_mut(source, f)?;
    }
    if let Some(agg) = &mut plan.aggregate {
        for e in agg
            .group_by
            .iter_mut()
            .chain(agg.calls.iter_mut().filter_map(|c| c.arg.as_mut()))
        {
            f(e)?;
        }
    }
    for e in plan
        .filter
        .iter_mut()
        .chain(plan.having.iter_mut())
        .chain(plan.projection.iter_mut())
        .chain(plan.limit.iter_mut())
        .chain(plan.offset.iter_mut())
    {
        f(e)?;
    }
    Ok(())
}

/// Calls `f` on every expression of a statement plan (not of its subqueries).
pub fn plan_exprs_mut(plan: &mut Plan, f: &mut dyn FnMut(&mut Expr) -> Result<()>) -> Result<()> {
    let returning = match plan {
        Plan::Select(select) => return select_exprs_mut(select, f),
        Plan::Insert(insert) => {
            // The direct form was compiled from the expressions about to change.
            insert.direct = None;
            match &mut insert.source {
                InsertSource::Values(rows) => {
                    for e in rows.iter_mut().flatten().flatten() {
                        f(e)?;
                    }
                }
                InsertSource::Select(select) => select_exprs_mut(select, f)?,
            }
            &mut insert.returning
        }
        Plan::Update(update) => {
            source_exprs_mut(&mut update.source, f)?;
            for e in update
                .filter
                .iter_mut()
                .chain(update.assignments.iter_mut().map(|(_, e)| e))
            {
                f(e)?;
            }
            &mut update.returning
        }
        Plan::Delete(delete) => {
            source_exprs_mut(&mut delete.source, f)?;
            for e in delete.filter.iter_mut() {
                f(e)?;
            }
            &mut delete.returning
        }
    };
    if let Some(returning) = returning {
        for e in &mut returning.exprs {
            f(e)?;
        }
    }
    Ok(())
}

/// Re-chooses every source's access path (after subqueries became constants).
pub fn replan_access(plan: &mut Plan) {
    let mut fix = |source: &mut Source| {
        source.access = choose_access(&source.schema, &source.filter);
        source.implied = implied_conjuncts(&source.schema, &source.filter, &source.access);
    };
    match plan {
        Plan::Select(select) => {
            select.sources.iter_mut().for_each(&mut fix);
            if select.presorted
                && !select
                    .sources
                    .first()
                    .is_some_and(|s| s.access.in_primary_order())
            {
                select.presorted = false;
                select.sources.iter_mut().for_each(|s| s.reverse = false);
            }
        }
        Plan::Insert(insert) => {
            if let InsertSource::Select(select) = &mut insert.source {
                select.sources.iter_mut().for_each(&mut fix);
            }
        }
        Plan::Update(update) => fix(&mut update.source),
        Plan::Delete(delete) => fix(&mut delete.source),
    }
}

/// Whether an expression still refers to a subquery.
pub fn has_subquery(e: &Expr) -> bool {
    e.any(&|n| {
        matches!(
            n,
            Expr::Subquery(_) | Expr::Exists(_) | Expr::InSubquery { .. }
        )
    })
}

/// For a single-table aggregate that the executor can accumulate straight
/// from the stored rows' bytes: each call's argument column (`None` for
/// `count(*)`). That is a query over one stored table, with no GROUP BY,
/// no residual WHERE, no DISTINCT aggregate, and only bare columns as
/// aggregate arguments; `None` for any other query.
pub fn encoded_aggregate(plan: &SelectPlan) -> Option<Vec<Option<usize>>> {
    let ([source], Some(agg), None) = (plan.sources.as_slice(), &plan.aggregate, &plan.filter)
    else {
        return None;
    };
    if source.derived.is_some()
        || source.offset != 0
        || !agg.group_by.is_empty()
        || !plan.set_ops.is_empty()
    {
        return None;
    }
    agg.calls
        .iter()
        .map(|call| match (&call.arg, call.distinct) {
            (_, true) => None,
            (None, false) => Some(None),
            (Some(Expr::Column(c)), false) if *c < source.schema.columns.len() => Some(Some(*c)),
            _ => None,
        })
        .collect()
}

/// Whether an UPDATE may rewrite each matched row's assigned columns in
/// its stored encoding (splicing the new values in) instead of decoding
/// and re-encoding it whole: no RETURNING, and no assigned column is a
/// primary-key column or a column of any index (so no key or index entry
/// moves).
pub fn updates_in_place(plan: &UpdatePlan) -> bool {
    let schema = &plan.source.schema;
    plan.returning.is_none()
        && plan.source.derived.is_none()
        && plan.assignments.iter().all(|(c, _)| {
            !schema.primary_key.contains(c)
                && !schema.indexes.iter().any(|index| index.columns.contains(c))
        })
}
