//! Bound expressions (columns resolved to positions) and their evaluation
//! with PostgreSQL's semantics: three-valued logic, checked integer
//! arithmetic that truncates on division, errors on division by zero,
//! LIKE, CASE, casts and the scalar functions.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use crate::encoding::{row_column, RawValue, RowFault};
use crate::error::{QueryError, Result};
use crate::value::{parse_text, real_to_integer, DataType, Value};

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// `AND`
    And,
    /// `OR`
    Or,
    /// `||`
    Concat,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Eq => "=",
            BinOp::NotEq => "<>",
            BinOp::Lt => "<",
            BinOp::LtEq => "<=",
            BinOp::Gt => ">",
            BinOp::GtEq => ">=",
            BinOp::And => "AND",
            BinOp::Or => "OR",
            BinOp::Concat => "||",
        }
    }

    /// Whether this is a comparison.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq
        )
    }

    /// Whether this is `+ - * / %`.
    pub fn is_arithmetic(self) -> bool {
        matches!(
            self,
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod
        )
    }

    /// The comparison with its operands swapped (`a < b` ⇔ `b > a`).
    pub fn flipped(self) -> BinOp {
        match self {
            BinOp::Lt => BinOp::Gt,
            BinOp::LtEq => BinOp::GtEq,
            BinOp::Gt => BinOp::Lt,
            BinOp::GtEq => BinOp::LtEq,
            other => other,
        }
    }
}

/// A scalar function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// abs(x)
    Abs,
    /// lower(s)
    Lower,
    /// upper(s)
    Upper,
    /// length(s): characters (bytes for a blob)
    Length,
    /// octet_length(s)
    OctetLength,
    /// substr(s, start [, count])
    Substr,
    /// round(x [, digits])
    Round,
    /// ceil(x)
    Ceil,
    /// floor(x)
    Floor,
    /// coalesce(a, b, ...)
    Coalesce,
    /// nullif(a, b)
    Nullif,
    /// greatest(a, b, ...)
    Greatest,
    /// least(a, b, ...)
    Least,
    /// trim(s)
    Trim,
    /// ltrim(s)
    Ltrim,
    /// rtrim(s)
    Rtrim,
    /// replace(s, from, to)
    Replace,
    /// concat(a, b, ...)
    Concat,
    /// mod(a, b)
    Mod,
    /// power(a, b)
    Power,
    /// sqrt(x)
    Sqrt,
    /// sign(x)
    Sign,
}

impl Func {
    /// The function of a SQL name, with its accepted argument counts.
    pub fn lookup(name: &str) -> Option<(Func, usize, usize)> {
        const MANY: usize = usize::MAX;
        Some(match name {
            "abs" => (Func::Abs, 1, 1),
            "lower" => (Func::Lower, 1, 1),
            "upper" => (Func::Upper, 1, 1),
            "length" | "char_length" | "character_length" => (Func::Length, 1, 1),
            "octet_length" => (Func::OctetLength, 1, 1),
            "substr" | "substring" => (Func::Substr, 2, 3),
            "round" => (Func::Round, 1, 2),
            "ceil" | "ceiling" => (Func::Ceil, 1, 1),
            "floor" => (Func::Floor, 1, 1),
            "coalesce" => (Func::Coalesce, 1, MANY),
            "nullif" => (Func::Nullif, 2, 2),
            "greatest" => (Func::Greatest, 1, MANY),
            "least" => (Func::Least, 1, MANY),
            "trim" | "btrim" => (Func::Trim, 1, 1),
            "ltrim" => (Func::Ltrim, 1, 1),
            "rtrim" => (Func::Rtrim, 1, 1),
            "replace" => (Func::Replace, 3, 3),
            "concat" => (Func::Concat, 1, MANY),
            "mod" => (Func::Mod, 2, 2),
            "power" | "pow" => (Func::Power, 2, 2),
            "sqrt" => (Func::Sqrt, 1, 1),
            "sign" => (Func::Sign, 1, 1),
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Func::Abs => "abs",
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::Length => "length",
            Func::OctetLength => "octet_length",
            Func::Substr => "substr",
            Func::Round => "round",
            Func::Ceil => "ceil",
            Func::Floor => "floor",
            Func::Coalesce => "coalesce",
            Func::Nullif => "nullif",
            Func::Greatest => "greatest",
            Func::Least => "least",
            Func::Trim => "trim",
            Func::Ltrim => "ltrim",
            Func::Rtrim => "rtrim",
            Func::Replace => "replace",
            Func::Concat => "concat",
            Func::Mod => "mod",
            Func::Power => "power",
            Func::Sqrt => "sqrt",
            Func::Sign => "sign",
        }
    }
}

/// A bound expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant.
    Literal(Value),
    /// Statement parameter `$n` (0-based here).
    Param(usize),
    /// A column of the input row, by position.
    Column(usize),
    /// An aggregate's result, by its position in the query's aggregate list
    /// (replaced by a column of the aggregated row before evaluation).
    Aggregate(usize),
    /// `NOT e`
    Not(Box<Expr>),
    /// `-e`
    Neg(Box<Expr>),
    /// `a op b`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `e IS [NOT] NULL`
    IsNull(Box<Expr>, bool),
    /// `e IS [NOT] TRUE/FALSE`: (expr, the truth value tested, negated)
    IsBool(Box<Expr>, bool, bool),
    /// `a IS [NOT] DISTINCT FROM b`
    IsDistinct(Box<Expr>, Box<Expr>, bool),
    /// `e [NOT] IN (list)`
    InList {
        /// The tested value.
        expr: Box<Expr>,
        /// The candidates.
        list: Vec<Expr>,
        /// NOT IN.
        negated: bool,
    },
    /// `e [NOT] BETWEEN low AND high`
    Between {
        /// The tested value.
        expr: Box<Expr>,
        /// Lower bound (inclusive).
        low: Box<Expr>,
        /// Upper bound (inclusive).
        high: Box<Expr>,
        /// NOT BETWEEN.
        negated: bool,
    },
    /// `e [NOT] [I]LIKE pattern [ESCAPE c]`
    Like {
        /// The tested text.
        expr: Box<Expr>,
        /// The pattern.
        pattern: Box<Expr>,
        /// The escape character (default `\`).
        escape: Option<Box<Expr>>,
        /// NOT LIKE.
        negated: bool,
        /// ILIKE.
        case_insensitive: bool,
    },
    /// `CASE [operand] WHEN .. THEN .. [ELSE ..] END`
    Case {
        /// The simple-CASE operand.
        operand: Option<Box<Expr>>,
        /// (condition or compared value, result) pairs.
        whens: Vec<(Expr, Expr)>,
        /// The ELSE result.
        otherwise: Option<Box<Expr>>,
    },
    /// A scalar function call.
    Func(Func, Vec<Expr>),
    /// `CAST(e AS type)`
    Cast(Box<Expr>, DataType),
    /// A scalar subquery, by its position in the statement's subquery list
    /// (replaced by its value before the statement runs).
    Subquery(usize),
    /// `EXISTS (subquery)` (replaced by its value before the statement runs).
    Exists(usize),
    /// `e [NOT] IN (subquery)` (replaced by an IN list before the statement runs).
    InSubquery {
        /// The tested value.
        expr: Box<Expr>,
        /// The subquery's position.
        index: usize,
        /// NOT IN.
        negated: bool,
    },
}

impl Expr {
    /// Calls `f` on every direct child.
    pub fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Literal(_)
            | Expr::Param(_)
            | Expr::Column(_)
            | Expr::Aggregate(_)
            | Expr::Subquery(_)
            | Expr::Exists(_) => vec![],
            Expr::InSubquery { expr, .. } => vec![expr],
            Expr::Not(e)
            | Expr::Neg(e)
            | Expr::IsNull(e, _)
            | Expr::IsBool(e, _, _)
            | Expr::Cast(e, _) => vec![e],
            Expr::Binary(_, a, b) | Expr::IsDistinct(a, b, _) => vec![a, b],
            Expr::InList { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
            Expr::Between {
                expr, low, high, ..
            } => vec![expr, low, high],
            Expr::Like {
                expr,
                pattern,
                escape,
                ..
            } => [Some(&**expr), Some(&**pattern), escape.as_deref()]
                .into_iter()
                .flatten()
                .collect(),
            Expr::Case {
                operand,
                whens,
                otherwise,
            } => operand
                .as_deref()
                .into_iter()
                .chain(whens.iter().flat_map(|(a, b)| [a, b]))
                .chain(otherwise.as_deref())
                .collect(),
            Expr::Func(_, args) => args.iter().collect(),
        }
    }

    /// Rebuilds the expression bottom-up, replacing nodes with `f`'s
    /// answer where it gives one.
    pub fn rewrite(self, f: &mut dyn FnMut(&Expr) -> Result<Option<Expr>>) -> Result<Expr> {
        if let Some(replacement) = f(&self)? {
            return Ok(replacement);
        }
        #[allow(clippy::boxed_local)] // the tree's children are boxed; this rebuilds them
        fn rw(e: Box<Expr>, f: &mut dyn FnMut(&Expr) -> Result<Option<Expr>>) -> Result<Box<Expr>> {
            Ok(Box::new(e.rewrite(f)?))
        }
        Ok(match self {
            Expr::InSubquery {
                expr,
                index,
                negated,
            } => Expr::InSubquery {
                expr: rw(expr, f)?,
                index,
                negated,
            },
            leaf @ (Expr::Literal(_)
            | Expr::Param(_)
            | Expr::Column(_)
            | Expr::Aggregate(_)
            | Expr::Subquery(_)
            | Expr::Exists(_)) => leaf,
            Expr::Not(e) => Expr::Not(rw(e, f)?),
            Expr::Neg(e) => Expr::Neg(rw(e, f)?),
            Expr::IsNull(e, n) => Expr::IsNull(rw(e, f)?, n),
            Expr::IsBool(e, v, n) => Expr::IsBool(rw(e, f)?, v, n),
            Expr::Cast(e, t) => Expr::Cast(rw(e, f)?, t),
            Expr::Binary(op, a, b) => Expr::Binary(op, rw(a, f)?, rw(b, f)?),
            Expr::IsDistinct(a, b, n) => Expr::IsDistinct(rw(a, f)?, rw(b, f)?, n),
            Expr::InList {
                expr,
                list,
                negated,
            } => Expr::InList {
                expr: rw(expr, f)?,
                list: list
                    .into_iter()
                    .map(|e| e.rewrite(f))
                    .collect::<Result<_>>()?,
                negated,
            },
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => Expr::Between {
                expr: rw(expr, f)?,
                low: rw(low, f)?,
                high: rw(high, f)?,
                negated,
            },
            Expr::Like {
                expr,
                pattern,
                escape,
                negated,
                case_insensitive,
            } => Expr::Like {
                expr: rw(expr, f)?,
                pattern: rw(pattern, f)?,
                escape: escape.map(|e| rw(e, f)).transpose()?,
                negated,
                case_insensitive,
            },
            Expr::Case {
                operand,
                whens,
                otherwise,
            } => Expr::Case {
                operand: operand.map(|e| rw(e, f)).transpose()?,
                whens: whens
                    .into_iter()
                    .map(|(a, b)| Ok((a.rewrite(f)?, b.rewrite(f)?)))
                    .collect::<Result<_>>()?,
                otherwise: otherwise.map(|e| rw(e, f)).transpose()?,
            },
            Expr::Func(func, args) => Expr::Func(
                func,
                args.into_iter()
                    .map(|e| e.rewrite(f))
                    .collect::<Result<_>>()?,
            ),
        })
    }

    /// Whether any node satisfies `pred`.
    pub fn any(&self, pred: &dyn Fn(&Expr) -> bool) -> bool {
        pred(self) || self.children().into_iter().any(|c| c.any(pred))
    }

    /// Whether the expression reads no column (a constant, maybe with parameters).
    pub fn is_constant(&self) -> bool {
        !self.any(&|e| matches!(e, Expr::Column(_) | Expr::Aggregate(_)))
    }

    /// The columns the expression reads.
    pub fn columns(&self, out: &mut Vec<usize>) {
        if let Expr::Column(c) = self {
            out.push(*c);
        }
        for child in self.children() {
            child.columns(out);
        }
    }

    /// Shifts every column reference by `-by` (for a filter moved onto one table).
    pub fn rebased(&self, by: usize) -> Expr {
        let mut shift = |e: &Expr| -> Result<Option<Expr>> {
            Ok(match e {
                Expr::Column(c) => Some(Expr::Column(c - by)),
                _ => None,
            })
        };
        // The rewrite cannot fail: `shift` never errs.
        self.clone()
            .rewrite(&mut shift)
            .unwrap_or_else(|_| self.clone())
    }

    /// The type the expression yields, when known without running it.
    pub fn static_type(&self, columns: &[Option<DataType>]) -> Option<DataType> {
        match self {
            Expr::Literal(v) => v.data_type(),
            Expr::Param(_) | Expr::Aggregate(_) | Expr::Subquery(_) => None,
            Expr::Exists(_) | Expr::InSubquery { .. } => Some(DataType::Boolean),
            Expr::Column(c) => columns.get(*c).copied().flatten(),
            Expr::Not(_)
            | Expr::IsNull(..)
            | Expr::IsBool(..)
            | Expr::IsDistinct(..)
            | Expr::InList { .. }
            | Expr::Between { .. }
            | Expr::Like { .. } => Some(DataType::Boolean),
            Expr::Neg(e) => e.static_type(columns),
            Expr::Binary(op, a, b) => match op {
                BinOp::Concat => Some(DataType::Text),
                op if op.is_comparison() || matches!(op, BinOp::And | BinOp::Or) => {
                    Some(DataType::Boolean)
                }
                _ => match (a.static_type(columns), b.static_type(columns)) {
                    (Some(DataType::Integer), Some(DataType::Integer)) => Some(DataType::Integer),
                    (Some(DataType::Real), Some(DataType::Integer | DataType::Real))
                    | (Some(DataType::Integer), Some(DataType::Real)) => Some(DataType::Real),
                    _ => None,
                },
            },
            Expr::Case {
                whens, otherwise, ..
            } => whens
                .iter()
                .map(|(_, r)| r)
                .chain(otherwise.as_deref())
                .find_map(|r| r.static_type(columns)),
            Expr::Cast(_, ty) => Some(*ty),
            Expr::Func(f, args) => match f {
                Func::Lower
                | Func::Upper
                | Func::Substr
                | Func::Trim
                | Func::Ltrim
                | Func::Rtrim
                | Func::Replace
                | Func::Concat => Some(DataType::Text),
                Func::Length | Func::OctetLength => Some(DataType::Integer),
                Func::Power | Func::Sqrt => Some(DataType::Real),
                _ => args.iter().find_map(|a| a.static_type(columns)),
            },
        }
    }

    /// Evaluates the expression, borrowing literals, parameters and columns.
    pub fn eval_cow<'a>(&'a self, row: &'a [Value], params: &'a [Value]) -> Result<Cow<'a, Value>> {
        match self {
            Expr::Literal(v) => Ok(Cow::Borrowed(v)),
            Expr::Column(c) => row
                .get(*c)
                .map(Cow::Borrowed)
                .ok_or_else(|| QueryError::corrupted(format!("row has no column {c}"))),
            Expr::Param(i) => params.get(*i).map(Cow::Borrowed).ok_or_else(|| {
                QueryError::sql("08P01", format!("no value for parameter ${}", i + 1))
            }),
            // Arithmetic inside a condition (`id % 10 = 0`) stays out of
            // the general `eval`.
            Expr::Binary(op, a, b) if op.is_arithmetic() => Ok(Cow::Owned(binary_cow(
                *op,
                a.eval_cow(row, params)?,
                b.eval_cow(row, params)?,
            )?)),
            other => other.eval(row, params).map(Cow::Owned),
        }
    }

    /// Evaluates the expression on `row`.
    pub fn eval(&self, row: &[Value], params: &[Value]) -> Result<Value> {
        match self {
            Expr::Literal(v) => Ok(v.clone()),
            Expr::Param(i) => params.get(*i).cloned().ok_or_else(|| {
                QueryError::sql("08P01", format!("no value for parameter ${}", i + 1))
            }),
            Expr::Column(c) => row
                .get(*c)
                .cloned()
                .ok_or_else(|| QueryError::corrupted(format!("row has no column {c}"))),
            Expr::Subquery(_) | Expr::Exists(_) | Expr::InSubquery { .. } => Err(QueryError::sql(
                "XX000",
                "internal: a subquery was not evaluated before its statement",
            )),
            Expr::Aggregate(_) => Err(QueryError::sql(
                "42803",
                "aggregate used outside an aggregation",
            )),
            Expr::Not(e) => Ok(match truth(&e.eval(row, params)?)? {
                Some(b) => Value::Boolean(!b),
                None => Value::Null,
            }),
            Expr::Neg(e) => negate(e.eval(row, params)?),
            Expr::Binary(BinOp::And, a, b) => {
                let left = truth(&a.eval(row, params)?)?;
                if left == Some(false) {
                    return Ok(Value::Boolean(false));
                }
                let right = truth(&b.eval(row, params)?)?;
                Ok(match (left, right) {
                    (_, Some(false)) => Value::Boolean(false),
                    (Some(true), Some(true)) => Value::Boolean(true),
                    _ => Value::Null,
                })
            }
            Expr::Binary(BinOp::Or, a, b) => {
                let left = truth(&a.eval(row, params)?)?;
                if left == Some(true) {
                    return Ok(Value::Boolean(true));
                }
                let right = truth(&b.eval(row, params)?)?;
                Ok(match (left, right) {
                    (_, Some(true)) => Value::Boolean(true),
                    (Some(false), Some(false)) => Value::Boolean(false),
                    _ => Value::Null,
                })
            }
            Expr::Binary(op, a, b) if op.is_comparison() => compare(
                *op,
                a.eval_cow(row, params)?.as_ref(),
                b.eval_cow(row, params)?.as_ref(),
            ),
            Expr::Binary(op, a, b) => {
                binary_cow(*op, a.eval_cow(row, params)?, b.eval_cow(row, params)?)
            }
            Expr::IsNull(e, negated) => {
                Ok(Value::Boolean(e.eval(row, params)?.is_null() != *negated))
            }
            Expr::IsBool(e, value, negated) => {
                let t = truth(&e.eval(row, params)?)?;
                Ok(Value::Boolean((t == Some(*value)) != *negated))
            }
            Expr::IsDistinct(a, b, negated) => {
                let (a, b) = (a.eval(row, params)?, b.eval(row, params)?);
                let distinct = match (a.is_null(), b.is_null()) {
                    (true, true) => false,
                    (true, false) | (false, true) => true,
                    (false, false) => a.sql_cmp(&b)? != Some(Ordering::Equal),
                };
                Ok(Value::Boolean(distinct != *negated))
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                // Over an empty set (a subquery's), IN is false even for NULL.
                if list.is_empty() {
                    return Ok(Value::Boolean(*negated));
                }
                let value = expr.eval_cow(row, params)?;
                if value.is_null() {
                    return Ok(Value::Null);
                }
                let mut saw_null = false;
                for candidate in list {
                    match value.sql_cmp(candidate.eval_cow(row, params)?.as_ref())? {
                        Some(Ordering::Equal) => return Ok(Value::Boolean(!negated)),
                        None => saw_null = true,
                        Some(_) => {}
                    }
                }
                Ok(if saw_null {
                    Value::Null
                } else {
                    Value::Boolean(*negated)
                })
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let value = expr.eval_cow(row, params)?;
                let above = compare(BinOp::GtEq, &value, low.eval_cow(row, params)?.as_ref())?;
                let below = compare(BinOp::LtEq, &value, high.eval_cow(row, params)?.as_ref())?;
                let both = and3(truth(&above)?, truth(&below)?);
                Ok(match both {
                    Some(b) => Value::Boolean(b != *negated),
                    None => Value::Null,
                })
            }
            Expr::Like {
                expr,
                pattern,
                escape,
                negated,
                case_insensitive,
            } => {
                let value = expr.eval(row, params)?;
                let pattern = pattern.eval(row, params)?;
                let escape = match escape {
                    Some(e) => e.eval(row, params)?,
                    None => Value::Text("\\".into()),
                };
                let (Value::Text(value), Value::Text(pattern)) = (&value, &pattern) else {
                    if value.is_null() || pattern.is_null() {
                        return Ok(Value::Null);
                    }
                    return Err(QueryError::type_mismatch(format!(
                        "operator does not exist: {} ~~ {}",
                        value.type_name(),
                        pattern.type_name()
                    )));
                };
                let escape = match escape {
                    Value::Text(s) if s.chars().count() <= 1 => s.chars().next(),
                    Value::Null => return Ok(Value::Null),
                    _ => return Err(QueryError::invalid_text("invalid escape string")),
                };
                let matched = if *case_insensitive {
                    like(&value.to_lowercase(), &pattern.to_lowercase(), escape)?
                } else {
                    like(value, pattern, escape)?
                };
                Ok(Value::Boolean(matched != *negated))
            }
            Expr::Case {
                operand,
                whens,
                otherwise,
            } => {
                let operand = operand.as_ref().map(|o| o.eval(row, params)).transpose()?;
                for (when, then) in whens {
                    let hit = match &operand {
                        Some(value) => {
                            value.sql_cmp(&when.eval(row, params)?)? == Some(Ordering::Equal)
                        }
                        None => truth(&when.eval(row, params)?)? == Some(true),
                    };
                    if hit {
                        return then.eval(row, params);
                    }
                }
                otherwise
                    .as_ref()
                    .map_or(Ok(Value::Null), |e| e.eval(row, params))
            }
            Expr::Func(func, args) => call(*func, args, row, params),
            Expr::Cast(e, ty) => cast(e.eval(row, params)?, *ty),
        }
    }

    /// Evaluates a condition: true only for TRUE (NULL counts as false).
    pub fn eval_condition(&self, row: &[Value], params: &[Value]) -> Result<bool> {
        // A comparison, the usual filter, is decided without building its
        // boolean value; the operands are borrowed where they can be.
        if let Expr::Binary(op, a, b) = self {
            if op.is_comparison() {
                let (x, y) = (a.eval_cow(row, params)?, b.eval_cow(row, params)?);
                return Ok(x.sql_cmp(&y)?.is_some_and(|o| comparison_holds(*op, o)));
            }
        }
        Ok(truth(&self.eval(row, params)?)? == Some(true))
    }

    /// Formats the expression with column names, for EXPLAIN.
    pub fn display<'a>(&'a self, names: &'a [String]) -> ExprDisplay<'a> {
        ExprDisplay { expr: self, names }
    }
}

/// Three-valued AND.
fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

/// The truth value of a condition; an error when it is not boolean.
pub fn truth(value: &Value) -> Result<Option<bool>> {
    match value {
        Value::Boolean(b) => Ok(Some(*b)),
        Value::Null => Ok(None),
        other => Err(QueryError::type_mismatch(format!(
            "argument of type {} is not a boolean",
            other.type_name()
        ))),
    }
}

fn negate(value: Value) -> Result<Value> {
    match value {
        Value::Null => Ok(Value::Null),
        Value::Integer(i) => i
            .checked_neg()
            .map(Value::Integer)
            .ok_or_else(|| QueryError::out_of_range("bigint out of range")),
        Value::Real(r) => Ok(Value::Real(-r)),
        other => Err(QueryError::type_mismatch(format!(
            "operator does not exist: - {}",
            other.type_name()
        ))),
    }
}

fn no_operator(op: BinOp, a: &Value, b: &Value) -> QueryError {
    QueryError::sql(
        "42883",
        format!(
            "operator does not exist: {} {} {}",
            a.type_name(),
            op.symbol(),
            b.type_name()
        ),
    )
}

fn overflow() -> QueryError {
    QueryError::out_of_range("bigint out of range")
}

/// Applies a comparison operator.
pub fn compare(op: BinOp, a: &Value, b: &Value) -> Result<Value> {
    debug_assert!(op.is_comparison());
    Ok(match a.sql_cmp(b)? {
        None => Value::Null,
        Some(o) => Value::Boolean(comparison_holds(op, o)),
    })
}

/// Whether comparison `op` holds between operands ordered `o`.
fn comparison_holds(op: BinOp, o: Ordering) -> bool {
    match op {
        BinOp::Eq => o == Ordering::Equal,
        BinOp::NotEq => o != Ordering::Equal,
        BinOp::Lt => o == Ordering::Less,
        BinOp::LtEq => o != Ordering::Greater,
        BinOp::Gt => o == Ordering::Greater,
        _ => o != Ordering::Less,
    }
}

/// [`binary`] on borrowed operands: integer arithmetic, the common case,
/// copies neither.
fn binary_cow(op: BinOp, a: Cow<'_, Value>, b: Cow<'_, Value>) -> Result<Value> {
    if let (Value::Integer(x), Value::Integer(y)) = (a.as_ref(), b.as_ref()) {
        if op.is_arithmetic() {
            return integer_arith(op, *x, *y);
        }
    }
    binary(op, a.into_owned(), b.into_owned())
}

/// Applies a (non-logical) binary operator.
pub fn binary(op: BinOp, a: Value, b: Value) -> Result<Value> {
    if op.is_comparison() {
        return compare(op, &a, &b);
    }
    if a.is_null() || b.is_null() {
        if op == BinOp::Concat
            || is_arith_type(&a)
            || is_arith_type(&b)
            || a.is_null() && b.is_null()
        {
            return Ok(Value::Null);
        }
        return Err(no_operator(op, &a, &b));
    }
    match (op, &a, &b) {
        (BinOp::Concat, Value::Blob(x), Value::Blob(y)) => {
            Ok(Value::Blob([x.as_slice(), y].concat()))
        }
        (BinOp::Concat, Value::Blob(_), _) | (BinOp::Concat, _, Value::Blob(_)) => {
            Err(no_operator(op, &a, &b))
        }
        (BinOp::Concat, _, _) => Ok(Value::Text(format!("{a}{b}"))),
        (_, Value::Integer(x), Value::Integer(y)) => integer_arith(op, *x, *y),
        (_, Value::Integer(_) | Value::Real(_), Value::Integer(_) | Value::Real(_)) => {
            real_arith(op, as_f64(&a), as_f64(&b), &a, &b)
        }
        _ => Err(no_operator(op, &a, &b)),
    }
}

fn is_arith_type(v: &Value) -> bool {
    matches!(v, Value::Integer(_) | Value::Real(_))
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Integer(i) => *i as f64,
        Value::Real(r) => *r,
        _ => f64::NAN,
    }
}

fn integer_arith(op: BinOp, x: i64, y: i64) -> Result<Value> {
    let result = match op {
        BinOp::Add => x.checked_add(y),
        BinOp::Sub => x.checked_sub(y),
        BinOp::Mul => x.checked_mul(y),
        BinOp::Div | BinOp::Mod if y == 0 => return Err(QueryError::division_by_zero()),
        // Truncates toward zero, as PostgreSQL does.
        BinOp::Div => x.checked_div(y),
        // i64::MIN % -1 is 0 in SQL; checked_rem reports overflow instead.
        BinOp::Mod => Some(x.checked_rem(y).unwrap_or(0)),
        _ => return Err(no_operator(op, &Value::Integer(x), &Value::Integer(y))),
    };
    result.map(Value::Integer).ok_or_else(overflow)
}

fn real_arith(op: BinOp, x: f64, y: f64, a: &Value, b: &Value) -> Result<Value> {
    let result = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div if y == 0.0 => return Err(QueryError::division_by_zero()),
        BinOp::Div => x / y,
        _ => return Err(no_operator(op, a, b)),
    };
    if result.is_infinite() && x.is_finite() && y.is_finite() {
        return Err(QueryError::out_of_range("value out of range: overflow"));
    }
    Ok(Value::Real(result))
}

/// SQL LIKE: `%` any run, `_` one character, `escape` quotes the next one.
pub fn like(text: &str, pattern: &str, escape: Option<char>) -> Result<bool> {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Any,
        One,
        Char(char),
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        toks.push(if Some(c) == escape {
            match chars.next() {
                Some(next) => Tok::Char(next),
                None => {
                    return Err(QueryError::invalid_text(
                        "LIKE pattern must not end with escape character",
                    ))
                }
            }
        } else if c == '%' {
            Tok::Any
        } else if c == '_' {
            Tok::One
        } else {
            Tok::Char(c)
        });
    }
    let text: Vec<char> = text.chars().collect();
    // Greedy matching with backtracking to the last `%`: O(len(text) * len(pattern)).
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match toks.get(p) {
            Some(Tok::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Tok::One) => {
                t += 1;
                p += 1;
            }
            Some(Tok::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return Ok(false),
            },
        }
    }
    Ok(toks[p..].iter().all(|t| *t == Tok::Any))
}

/// An explicit CAST.
pub fn cast(value: Value, ty: DataType) -> Result<Value> {
    match (value, ty) {
        (Value::Integer(i), DataType::Boolean) => Ok(Value::Boolean(i != 0)),
        (Value::Blob(b), DataType::Text) => Ok(Value::Text(Value::Blob(b).to_string())),
        (v, ty) => v.coerce_to(ty),
    }
}

fn text_arg(func: Func, v: &Value) -> Result<&str> {
    match v {
        Value::Text(s) => Ok(s),
        other => Err(QueryError::sql(
            "42883",
            format!(
                "function {}({}) does not exist",
                func.name(),
                other.type_name()
            ),
        )),
    }
}

fn int_arg(func: Func, v: &Value) -> Result<i64> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::Real(r) => real_to_integer(*r),
        Value::Text(s) => match parse_text(s, DataType::Integer)? {
            Value::Integer(i) => Ok(i),
            _ => Err(QueryError::invalid_text("integer expected")),
        },
        other => Err(QueryError::sql(
            "42883",
            format!(
                "function {}(.., {}) does not exist",
                func.name(),
                other.type_name()
            ),
        )),
    }
}

fn num_arg(func: Func, v: &Value) -> Result<f64> {
    match v {
        Value::Integer(_) | Value::Real(_) => Ok(as_f64(v)),
        other => Err(QueryError::sql(
            "42883",
            format!(
                "function {}({}) does not exist",
                func.name(),
                other.type_name()
            ),
        )),
    }
}

fn call(func: Func, args: &[Expr], row: &[Value], params: &[Value]) -> Result<Value> {
    // Functions that do not propagate NULL evaluate lazily.
    match func {
        Func::Coalesce => {
            for arg in args {
                let v = arg.eval(row, params)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            return Ok(Value::Null);
        }
        Func::Greatest | Func::Least => {
            let mut best = Value::Null;
            for arg in args {
                let v = arg.eval(row, params)?;
                if v.is_null() {
                    continue;
                }
                let better = match best.sql_cmp(&v)? {
                    None => true,
                    Some(o) => {
                        (func == Func::Greatest && o == Ordering::Less)
                            || (func == Func::Least && o == Ordering::Greater)
                    }
                };
                if better {
                    best = v;
                }
            }
            return Ok(best);
        }
        Func::Concat => {
            let mut out = String::new();
            for arg in args {
                let v = arg.eval(row, params)?;
                if !v.is_null() {
                    out.push_str(&v.to_string());
                }
            }
            return Ok(Value::Text(out));
        }
        Func::Nullif => {
            let a = args[0].eval(row, params)?;
            let b = args[1].eval(row, params)?;
            return Ok(if a.sql_cmp(&b)? == Some(Ordering::Equal) {
                Value::Null
            } else {
                a
            });
        }
        _ => {}
    }
    let values: Vec<Value> = args
        .iter()
        .map(|a| a.eval(row, params))
        .collect::<Result<_>>()?;
    if values.iter().any(Value::is_null) {
        return Ok(Value::Null);
    }
    let v = &values[0];
    Ok(match func {
        Func::Abs => match v {
            Value::Integer(i) => Value::Integer(i.checked_abs().ok_or_else(overflow)?),
            other => Value::Real(num_arg(func, other)?.abs()),
        },
        Func::Lower => Value::Text(text_arg(func, v)?.to_lowercase()),
        Func::Upper => Value::Text(text_arg(func, v)?.to_uppercase()),
        Func::Length => match v {
            Value::Blob(b) => Value::Integer(b.len() as i64),
            other => Value::Integer(text_arg(func, other)?.chars().count() as i64),
        },
        Func::OctetLength => match v {
            Value::Blob(b) => Value::Integer(b.len() as i64),
            other => Value::Integer(text_arg(func, other)?.len() as i64),
        },
        Func::Substr => substr(
            text_arg(func, v)?,
            int_arg(func, &values[1])?,
            values.get(2).map(|c| int_arg(func, c)).transpose()?,
        )?,
        Func::Round => round(func, v, values.get(1))?,
        Func::Ceil => match v {
            Value::Integer(i) => Value::Integer(*i),
            other => Value::Real(num_arg(func, other)?.ceil()),
        },
        Func::Floor => match v {
            Value::Integer(i) => Value::Integer(*i),
            other => Value::Real(num_arg(func, other)?.floor()),
        },
        Func::Trim => Value::Text(text_arg(func, v)?.trim_matches(' ').to_owned()),
        Func::Ltrim => Value::Text(text_arg(func, v)?.trim_start_matches(' ').to_owned()),
        Func::Rtrim => Value::Text(text_arg(func, v)?.trim_end_matches(' ').to_owned()),
        Func::Replace => {
            let from = text_arg(func, &values[1])?;
            let s = text_arg(func, v)?;
            Value::Text(if from.is_empty() {
                s.to_owned()
            } else {
                s.replace(from, text_arg(func, &values[2])?)
            })
        }
        Func::Mod => binary(BinOp::Mod, v.clone(), values[1].clone())?,
        Func::Power => {
            let r = num_arg(func, v)?.powf(num_arg(func, &values[1])?);
            if !r.is_finite() {
                return Err(QueryError::out_of_range("value out of range in power"));
            }
            Value::Real(r)
        }
        Func::Sqrt => {
            let x = num_arg(func, v)?;
            if x < 0.0 {
                return Err(QueryError::sql(
                    "2201F",
                    "cannot take square root of a negative number",
                ));
            }
            Value::Real(x.sqrt())
        }
        Func::Sign => match v {
            Value::Integer(i) => Value::Integer(i.signum()),
            other => Value::Real(
                num_arg(func, other)?.signum() * f64::from(u8::from(num_arg(func, other)? != 0.0)),
            ),
        },
        Func::Coalesce | Func::Greatest | Func::Least | Func::Concat | Func::Nullif => Value::Null,
    })
}

fn substr(s: &str, start: i64, count: Option<i64>) -> Result<Value> {
    if let Some(n) = count {
        if n < 0 {
            return Err(QueryError::sql(
                "22011",
                "negative substring length not allowed",
            ));
        }
    }
    // Characters at 1-based positions [start, start + count).
    let end = count.map(|n| start.saturating_add(n));
    let from = start.max(1);
    let taken: String = s
        .chars()
        .enumerate()
        .map(|(i, c)| (i as i64 + 1, c))
        .filter(|(pos, _)| *pos >= from && end.is_none_or(|e| *pos < e))
        .map(|(_, c)| c)
        .collect();
    Ok(Value::Text(taken))
}

fn round(func: Func, v: &Value, digits: Option<&Value>) -> Result<Value> {
    let digits = digits.map(|d| int_arg(func, d)).transpose()?.unwrap_or(0);
    match v {
        Value::Integer(i) if digits >= 0 => Ok(Value::Integer(*i)),
        other => {
            let x = num_arg(func, other)?;
            let scale = 10f64.powi(digits.clamp(-300, 300) as i32);
            let r = (x * scale).round() / scale;
            Ok(match other {
                Value::Integer(_) => Value::Integer(real_to_integer(r)?),
                _ => Value::Real(if r.is_finite() { r } else { x }),
            })
        }
    }
}

/// [`Expr::display`]'s output.
pub struct ExprDisplay<'a> {
    expr: &'a Expr,
    names: &'a [String],
}

impl<'a> fmt::Display for ExprDisplay<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names;
        let d = |e: &'a Expr| ExprDisplay { expr: e, names };
        match self.expr {
            Expr::Literal(Value::Text(s)) => write!(f, "'{}'", s.replace('\'', "''")),
            Expr::Literal(v) => write!(f, "{v}"),
            Expr::Param(i) => write!(f, "${}", i + 1),
            Expr::Column(c) => match self.names.get(*c) {
                Some(name) => f.write_str(name),
                None => write!(f, "#{c}"),
            },
            Expr::Aggregate(i) => write!(f, "agg#{i}"),
            Expr::Subquery(i) => write!(f, "(SubPlan {})", i + 1),
            Expr::Exists(i) => write!(f, "EXISTS(SubPlan {})", i + 1),
            Expr::InSubquery {
                expr,
                index,
                negated,
            } => write!(
                f,
                "({} {}IN (SubPlan {}))",
                d(expr),
                if *negated { "NOT " } else { "" },
                index + 1
            ),
            Expr::Not(e) => write!(f, "(NOT {})", d(e)),
            Expr::Neg(e) => write!(f, "(- {})", d(e)),
            Expr::Binary(op, a, b) => write!(f, "({} {} {})", d(a), op.symbol(), d(b)),
            Expr::IsNull(e, n) => write!(f, "({} IS {}NULL)", d(e), if *n { "NOT " } else { "" }),
            Expr::IsBool(e, v, n) => write!(
                f,
                "({} IS {}{})",
                d(e),
                if *n { "NOT " } else { "" },
                if *v { "TRUE" } else { "FALSE" }
            ),
            Expr::IsDistinct(a, b, n) => {
                write!(
                    f,
                    "({} IS {}DISTINCT FROM {})",
                    d(a),
                    if *n { "NOT " } else { "" },
                    d(b)
                )
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                write!(f, "({} {}IN (", d(expr), if *negated { "NOT " } else { "" })?;
                for (i, e) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", d(e))?;
                }
                f.write_str("))")
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => write!(
                f,
                "({} {}BETWEEN {} AND {})",
                d(expr),
                if *negated { "NOT " } else { "" },
                d(low),
                d(high)
            ),
            Expr::Like {
                expr,
                pattern,
                negated,
                case_insensitive,
                ..
            } => write!(
                f,
                "({} {}{} {})",
                d(expr),
                if *negated { "NOT " } else { "" },
                if *case_insensitive { "ILIKE" } else { "LIKE" },
                d(pattern)
            ),
            Expr::Case { .. } => f.write_str("CASE ... END"),
            Expr::Func(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, e) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", d(e))?;
                }
                f.write_str(")")
            }
            Expr::Cast(e, ty) => write!(f, "CAST({} AS {})", d(e), ty.sql_name()),
        }
    }
}

/// An integer test on one column of a stored row, decided on the row's
/// encoded bytes without decoding it: `column [% modulus] op constant`
/// for each (op, constant) in `tests` (a comparison has one test, a
/// BETWEEN two). The constants are literals or parameters bound when the
/// scan starts.
#[derive(Debug, Clone, PartialEq)]
pub struct RawCondition {
    /// The column of the table's row.
    column: usize,
    /// The non-zero divisor of `column % modulus`, if any.
    modulus: Option<i64>,
    /// Comparisons the (reduced) value must pass, all of them.
    tests: Vec<(BinOp, i64)>,
}

/// An integer literal, or a parameter bound to an integer.
fn integer_constant(e: &Expr, params: &[Value]) -> Option<i64> {
    match e {
        Expr::Literal(Value::Integer(i)) => Some(*i),
        Expr::Param(i) => match params.get(*i) {
            Some(Value::Integer(v)) => Some(*v),
            _ => None,
        },
        _ => None,
    }
}

/// `column` or `column % k` (k a non-zero integer constant).
fn integer_term(e: &Expr, params: &[Value]) -> Option<(usize, Option<i64>)> {
    match e {
        Expr::Column(c) => Some((*c, None)),
        Expr::Binary(BinOp::Mod, a, b) => match (&**a, integer_constant(b, params)) {
            (Expr::Column(c), Some(k)) if k != 0 => Some((*c, Some(k))),
            _ => None,
        },
        _ => None,
    }
}

impl RawCondition {
    /// Compiles a condition over a table's row when it has one of the
    /// shapes `term op constant`, `constant op term` or `term BETWEEN
    /// constant AND constant`, where a term is `column` or `column % k`
    /// and the constants are integers; `None` otherwise.
    pub fn compile(cond: &Expr, params: &[Value]) -> Option<RawCondition> {
        let (term, tests) = match cond {
            Expr::Binary(op, a, b) if op.is_comparison() => {
                match (integer_term(a, params), integer_constant(b, params)) {
                    (Some(term), Some(k)) => (term, vec![(*op, k)]),
                    _ => (
                        integer_term(b, params)?,
                        vec![(op.flipped(), integer_constant(a, params)?)],
                    ),
                }
            }
            Expr::Between {
                expr,
                low,
                high,
                negated: false,
            } => (
                integer_term(expr, params)?,
                vec![
                    (BinOp::GtEq, integer_constant(low, params)?),
                    (BinOp::LtEq, integer_constant(high, params)?),
                ],
            ),
            _ => return None,
        };
        debug_assert!(term.1 != Some(0), "a zero modulus is left to eval");
        Some(RawCondition {
            column: term.0,
            modulus: term.1,
            tests,
        })
    }

    /// Decides the condition on an encoded row: `Some(holds)` when the
    /// column holds an INTEGER or NULL (never true), `None` when it holds
    /// another type or the row predates the column (the caller evaluates
    /// the expression on the decoded row instead).
    #[inline]
    pub fn eval(&self, row: &[u8]) -> std::result::Result<Option<bool>, RowFault> {
        let value = match row_column(row, self.column)? {
            Some(RawValue::Integer(i)) => i,
            Some(RawValue::Null) => return Ok(Some(false)),
            _ => return Ok(None),
        };
        // As in `integer_arith`: i64::MIN % -1 is 0.
        let value = match self.modulus {
            Some(k) => value.checked_rem(k).unwrap_or(0),
            None => value,
        };
        Ok(Some(
            self.tests
                .iter()
                .all(|&(op, k)| comparison_holds(op, value.cmp(&k))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: Value) -> Box<Expr> {
        Box::new(Expr::Literal(v))
    }

    #[test]
    fn integer_division_truncates_and_zero_is_an_error() {
        let eval = |op, a, b| binary(op, Value::Integer(a), Value::Integer(b));
        assert_eq!(eval(BinOp::Div, -7, 2).ok(), Some(Value::Integer(-3)));
        assert_eq!(eval(BinOp::Mod, -7, 2).ok(), Some(Value::Integer(-1)));
        assert_eq!(
            eval(BinOp::Div, 1, 0).map_err(|e| e.sqlstate()).err(),
            Some("22012")
        );
        assert_eq!(
            eval(BinOp::Add, i64::MAX, 1)
                .map_err(|e| e.sqlstate())
                .err(),
            Some("22003")
        );
        assert_eq!(eval(BinOp::Mod, i64::MIN, -1).ok(), Some(Value::Integer(0)));
    }

    #[test]
    fn three_valued_logic() {
        let null = || lit(Value::Null);
        let t = || lit(Value::Boolean(true));
        let f = || lit(Value::Boolean(false));
        let run = |e: Expr| e.eval(&[], &[]).ok();
        assert_eq!(
            run(Expr::Binary(BinOp::And, null(), f())),
            Some(Value::Boolean(false))
        );
        assert_eq!(
            run(Expr::Binary(BinOp::And, null(), t())),
            Some(Value::Null)
        );
        assert_eq!(
            run(Expr::Binary(BinOp::Or, null(), t())),
            Some(Value::Boolean(true))
        );
        assert_eq!(run(Expr::Not(null())), Some(Value::Null));
        let in_list = Expr::InList {
            expr: lit(Value::Integer(1)),
            list: vec![Expr::Literal(Value::Integer(2)), Expr::Literal(Value::Null)],
            negated: true,
        };
        assert_eq!(run(in_list), Some(Value::Null));
    }

    #[test]
    fn like_patterns() {
        let m = |t, p| like(t, p, Some('\\')).unwrap_or(false);
        assert!(m("hello", "h%o"));
        assert!(m("hello", "%"));
        assert!(m("", "%"));
        assert!(!m("hello", "h_o"));
        assert!(m("a%b", "a\\%b"));
        assert!(!m("axb", "a\\%b"));
        assert!(m("mississippi", "%iss%ppi"));
        assert!(like("x", "x\\", Some('\\')).is_err());
    }

    #[test]
    fn substr_follows_postgres_positions() {
        assert_eq!(
            substr("hello", 0, Some(3)).ok(),
            Some(Value::Text("he".into()))
        );
        assert_eq!(
            substr("hello", 2, None).ok(),
            Some(Value::Text("ello".into()))
        );
        assert!(substr("hello", 1, Some(-1)).is_err());
    }
}

#[cfg(test)]
mod raw_condition_tests {
    //! Conditions decided on encoded rows, against `eval_condition` on the
    //! decoded row as the model.
    use super::*;
    use crate::encoding::encode_row;
    use proptest::prelude::*;

    fn column_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => (-50i64..50).prop_map(Value::Integer),
            1 => prop_oneof![Just(i64::MIN), Just(i64::MAX)].prop_map(Value::Integer),
            1 => Just(Value::Null),
            1 => Just(Value::Real(1.5)),
            1 => Just(Value::Text("7".into())),
        ]
    }

    fn op() -> impl Strategy<Value = BinOp> {
        prop_oneof![
            Just(BinOp::Eq),
            Just(BinOp::NotEq),
            Just(BinOp::Lt),
            Just(BinOp::LtEq),
            Just(BinOp::Gt),
            Just(BinOp::GtEq),
        ]
    }

    fn term(column: usize, modulus: Option<i64>) -> Expr {
        let col = Expr::Column(column);
        match modulus {
            Some(k) => Expr::Binary(
                BinOp::Mod,
                Box::new(col),
                Box::new(Expr::Literal(Value::Integer(k))),
            ),
            None => col,
        }
    }

    proptest! {
        #[test]
        fn raw_verdicts_match_eval_condition(
            row in proptest::collection::vec(column_value(), 1..4),
            column in 0usize..4,
            modulus in proptest::option::of(prop_oneof![Just(-1i64), Just(3), Just(10)]),
            op in op(),
            k in -12i64..12,
            flip in any::<bool>(),
            between in any::<bool>(),
            as_param in any::<bool>(),
        ) {
            let params = vec![Value::Integer(k)];
            let constant = if as_param { Expr::Param(0) } else { Expr::Literal(Value::Integer(k)) };
            let t = term(column, modulus);
            let cond = if between {
                Expr::Between {
                    expr: Box::new(t),
                    low: Box::new(constant),
                    high: Box::new(Expr::Literal(Value::Integer(k + 5))),
                    negated: false,
                }
            } else if flip {
                Expr::Binary(op, Box::new(constant), Box::new(t))
            } else {
                Expr::Binary(op, Box::new(t), Box::new(constant))
            };
            let raw = RawCondition::compile(&cond, &params);
            prop_assert!(raw.is_some(), "compiles: {cond:?}");
            let bytes = encode_row(&row);
            let verdict = raw.map(|r| r.eval(&bytes)).transpose()
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?
                .flatten();
            if column >= row.len() {
                prop_assert_eq!(verdict, None);
            } else if let Some(verdict) = verdict {
                let model = cond.eval_condition(&row, &params)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(verdict, model);
            } else {
                prop_assert!(!matches!(row[column], Value::Integer(_) | Value::Null));
            }
        }
    }

    #[test]
    fn other_shapes_are_not_compiled() {
        let col = || Box::new(Expr::Column(0));
        let int = |i| Box::new(Expr::Literal(Value::Integer(i)));
        let params = [Value::Text("x".into())];
        for cond in [
            Expr::Binary(BinOp::Eq, col(), Box::new(Expr::Literal(Value::Real(1.0)))),
            Expr::Binary(BinOp::Eq, col(), Box::new(Expr::Param(0))),
            Expr::Binary(BinOp::Eq, col(), col()),
            Expr::Binary(
                BinOp::Eq,
                Box::new(Expr::Binary(BinOp::Mod, col(), int(0))),
                int(0),
            ),
            Expr::Binary(BinOp::Add, col(), int(1)),
            Expr::Between {
                expr: col(),
                low: int(1),
                high: int(2),
                negated: true,
            },
        ] {
            assert_eq!(RawCondition::compile(&cond, &params), None, "{cond:?}");
        }
    }
}
