//! Binding expressions: names to positions, literals typed by what they
//! meet, operators, functions, aggregates and uncorrelated subqueries.

use super::*;

impl Binder<'_> {
    /// Binds a constant expression (no columns; parameters allowed).
    pub(crate) fn bind_constant(&mut self, e: &ast::Expr, clause: &str) -> Result<Expr> {
        self.bind_expr_no_agg(e, &Scope::default(), clause)
    }

    pub(super) fn bind_condition(
        &mut self,
        e: &ast::Expr,
        scope: &Scope,
        clause: &str,
    ) -> Result<Expr> {
        let bound = self.bind_expr_no_agg(e, scope, clause)?;
        match bound.static_type(&scope.types()) {
            None | Some(DataType::Boolean) => Ok(bound),
            Some(other) => Err(QueryError::type_mismatch(format!(
                "argument of {clause} must be type boolean, not type {}",
                other.pg_name()
            ))),
        }
    }

    pub(super) fn bind_expr_no_agg(
        &mut self,
        e: &ast::Expr,
        scope: &Scope,
        clause: &str,
    ) -> Result<Expr> {
        let saved = std::mem::replace(&mut self.agg_allowed, false);
        let result = self.bind_expr(e, scope);
        self.agg_allowed = saved;
        let bound = result.map_err(|err| match err {
            QueryError::Sql {
                sqlstate: "42803", ..
            } => QueryError::sql(
                "42803",
                format!("aggregate functions are not allowed in {clause}"),
            ),
            other => other,
        })?;
        Ok(bound)
    }

    pub(super) fn bind_with_aggs(&mut self, e: &ast::Expr, scope: &Scope) -> Result<Expr> {
        let saved = std::mem::replace(&mut self.agg_allowed, true);
        let result = self.bind_expr(e, scope);
        self.agg_allowed = saved;
        result
    }

    pub(super) fn bind_expr(&mut self, e: &ast::Expr, scope: &Scope) -> Result<Expr> {
        self.depth += 1;
        let result = if self.depth > MAX_EXPR_DEPTH {
            Err(QueryError::sql("54001", "expression nested too deeply"))
        } else {
            self.bind_expr_inner(e, scope)
        };
        self.depth -= 1;
        result
    }

    pub(super) fn boxed(&mut self, e: &ast::Expr, scope: &Scope) -> Result<Box<Expr>> {
        Ok(Box::new(self.bind_expr(e, scope)?))
    }

    pub(super) fn bind_expr_inner(&mut self, e: &ast::Expr, scope: &Scope) -> Result<Expr> {
        use ast::Expr as A;
        Ok(match e {
            A::Identifier(ident) => Expr::Column(scope.resolve(None, &ident_name(ident))?),
            A::CompoundIdentifier(parts) => match parts.as_slice() {
                [table, column] => {
                    Expr::Column(scope.resolve(Some(&ident_name(table)), &ident_name(column))?)
                }
                _ => return Err(QueryError::not_supported(format!("column reference {e}"))),
            },
            A::Value(v) => self.bind_value(&v.value)?,
            A::Nested(inner) => self.bind_expr(inner, scope)?,
            A::IsNull(x) => Expr::IsNull(self.boxed(x, scope)?, false),
            A::IsNotNull(x) => Expr::IsNull(self.boxed(x, scope)?, true),
            A::IsTrue(x) => Expr::IsBool(self.boxed(x, scope)?, true, false),
            A::IsNotTrue(x) => Expr::IsBool(self.boxed(x, scope)?, true, true),
            A::IsFalse(x) => Expr::IsBool(self.boxed(x, scope)?, false, false),
            A::IsNotFalse(x) => Expr::IsBool(self.boxed(x, scope)?, false, true),
            A::IsUnknown(x) => Expr::IsNull(self.boxed(x, scope)?, false),
            A::IsNotUnknown(x) => Expr::IsNull(self.boxed(x, scope)?, true),
            A::IsDistinctFrom(a, b) | A::IsNotDistinctFrom(a, b) => {
                let (a, b) = self.typed_pair(a, b, scope)?;
                Expr::IsDistinct(
                    Box::new(a),
                    Box::new(b),
                    matches!(e, A::IsNotDistinctFrom(..)),
                )
            }
            A::In {
                expr,
                target: ast::InTarget::List(list),
                negated,
                global: false,
            } => {
                let value = self.bind_expr(expr, scope)?;
                let ty = value.static_type(&scope.types());
                let list = list
                    .iter()
                    .map(|x| self.bind_expr(x, scope).and_then(|b| coerce_literal(b, ty)))
                    .collect::<Result<_>>()?;
                Expr::InList {
                    expr: Box::new(value),
                    list,
                    negated: *negated,
                }
            }
            A::In {
                expr,
                target: ast::InTarget::Subquery(query),
                negated,
                global: false,
            } => Expr::InSubquery {
                expr: self.boxed(expr, scope)?,
                index: self.bind_subquery(query, true)?,
                negated: *negated,
            },
            A::Subquery(query) => Expr::Subquery(self.bind_subquery(query, true)?),
            A::Exists { subquery, negated } => {
                let exists = Expr::Exists(self.bind_subquery(subquery, false)?);
                if *negated {
                    Expr::Not(Box::new(exists))
                } else {
                    exists
                }
            }
            A::In { .. } => return Err(QueryError::not_supported(format!("{e}"))),
            A::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let value = self.bind_expr(expr, scope)?;
                let ty = value.static_type(&scope.types());
                Expr::Between {
                    low: Box::new(coerce_literal(self.bind_expr(low, scope)?, ty)?),
                    high: Box::new(coerce_literal(self.bind_expr(high, scope)?, ty)?),
                    expr: Box::new(value),
                    negated: *negated,
                }
            }
            A::BinaryOp { left, op, right } => self.bind_binary(left, op, right, scope)?,
            A::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char,
            }
            | A::ILike {
                negated,
                any: false,
                expr,
                pattern,
                escape_char,
            } => Expr::Like {
                expr: self.boxed(expr, scope)?,
                pattern: self.boxed(pattern, scope)?,
                escape: escape_char
                    .as_ref()
                    .map(|c| self.boxed(c, scope))
                    .transpose()?,
                negated: *negated,
                case_insensitive: matches!(e, A::ILike { .. }),
            },
            A::UnaryOp { op, expr } => match op {
                ast::UnaryOperator::Not => Expr::Not(self.boxed(expr, scope)?),
                ast::UnaryOperator::Plus => self.bind_expr(expr, scope)?,
                ast::UnaryOperator::Minus => match &**expr {
                    A::Value(ast::ValueWithSpan {
                        value: ast::Value::Number(n, _),
                        ..
                    }) => number_literal(&format!("-{n}"))?,
                    other => match self.bind_expr(other, scope)? {
                        Expr::Literal(Value::Integer(i)) if i != i64::MIN => {
                            Expr::Literal(Value::Integer(-i))
                        }
                        Expr::Literal(Value::Real(r)) => Expr::Literal(Value::Real(-r)),
                        bound => Expr::Neg(Box::new(bound)),
                    },
                },
                other => return Err(QueryError::not_supported(format!("operator {other}"))),
            },
            A::Cast {
                kind: ast::CastKind::Cast | ast::CastKind::DoubleColon,
                expr,
                data_type,
                format: None,
            } => {
                let (ty, _) = map_type(data_type)?;
                let inner = self.bind_expr(expr, scope)?;
                match inner {
                    Expr::Literal(v) => Expr::Literal(crate::expr::cast(v, ty)?),
                    other => Expr::Cast(Box::new(other), ty),
                }
            }
            A::Ceil { expr, field } | A::Floor { expr, field } => {
                if *field != ast::CeilFloorKind::DateTimeField(ast::DateTimeField::NoDateTime) {
                    return Err(QueryError::not_supported(format!("{e}")));
                }
                let f = if matches!(e, A::Ceil { .. }) {
                    Func::Ceil
                } else {
                    Func::Floor
                };
                Expr::Func(f, vec![self.bind_expr(expr, scope)?])
            }
            A::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut args = vec![self.bind_expr(expr, scope)?];
                args.push(match substring_from {
                    Some(from) => self.bind_expr(from, scope)?,
                    None => Expr::Literal(Value::Integer(1)),
                });
                if let Some(count) = substring_for {
                    args.push(self.bind_expr(count, scope)?);
                }
                Expr::Func(Func::Substr, args)
            }
            A::Trim {
                trim_where,
                trim_what: None,
                expr,
                trim_characters: None,
            } => {
                let f = match trim_where {
                    None | Some(ast::TrimWhereField::Both) => Func::Trim,
                    Some(ast::TrimWhereField::Leading) => Func::Ltrim,
                    Some(ast::TrimWhereField::Trailing) => Func::Rtrim,
                };
                Expr::Func(f, vec![self.bind_expr(expr, scope)?])
            }
            A::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let operand = operand.as_ref().map(|o| self.boxed(o, scope)).transpose()?;
                let operand_ty = operand.as_ref().and_then(|o| o.static_type(&scope.types()));
                let mut whens = Vec::new();
                for w in conditions {
                    let cond = self.bind_expr(&w.condition, scope)?;
                    let cond = if operand.is_some() {
                        coerce_literal(cond, operand_ty)?
                    } else {
                        cond
                    };
                    whens.push((cond, self.bind_expr(&w.result, scope)?));
                }
                Expr::Case {
                    operand,
                    whens,
                    otherwise: else_result
                        .as_ref()
                        .map(|x| self.boxed(x, scope))
                        .transpose()?,
                }
            }
            A::Function(f) => self.bind_function(f, scope)?,
            other => return Err(QueryError::not_supported(format!("expression {other}"))),
        })
    }

    /// Binds an uncorrelated subquery (its own FROM only: outer columns are
    /// not visible); returns its position in the statement's list.
    pub(super) fn bind_subquery(&mut self, query: &ast::Query, one_column: bool) -> Result<usize> {
        let saved = (self.agg_allowed, self.in_agg);
        self.agg_allowed = false;
        self.in_agg = false;
        let plan = self.bind_query(query);
        (self.agg_allowed, self.in_agg) = saved;
        let plan = plan?;
        if one_column && plan.visible() != 1 {
            return Err(QueryError::sql(
                "42601",
                "subquery must return only one column",
            ));
        }
        self.subqueries.push(plan);
        Ok(self.subqueries.len() - 1)
    }

    /// Binds two operands that are compared, typing a text literal on one
    /// side by the other side's type.
    pub(super) fn typed_pair(
        &mut self,
        a: &ast::Expr,
        b: &ast::Expr,
        scope: &Scope,
    ) -> Result<(Expr, Expr)> {
        let a = self.bind_expr(a, scope)?;
        let b = self.bind_expr(b, scope)?;
        let types = scope.types();
        let (ta, tb) = (a.static_type(&types), b.static_type(&types));
        Ok((coerce_literal(a, tb)?, coerce_literal(b, ta)?))
    }

    pub(super) fn bind_binary(
        &mut self,
        left: &ast::Expr,
        op: &ast::BinaryOperator,
        right: &ast::Expr,
        scope: &Scope,
    ) -> Result<Expr> {
        use ast::BinaryOperator as B;
        let op = match op {
            B::Plus => BinOp::Add,
            B::Minus => BinOp::Sub,
            B::Multiply => BinOp::Mul,
            B::Divide => BinOp::Div,
            B::Modulo => BinOp::Mod,
            B::StringConcat => BinOp::Concat,
            B::Gt => BinOp::Gt,
            B::Lt => BinOp::Lt,
            B::GtEq => BinOp::GtEq,
            B::LtEq => BinOp::LtEq,
            B::Eq => BinOp::Eq,
            B::NotEq => BinOp::NotEq,
            B::And => BinOp::And,
            B::Or => BinOp::Or,
            other => return Err(QueryError::not_supported(format!("operator {other}"))),
        };
        let (a, b) = if op.is_comparison() {
            self.typed_pair(left, right, scope)?
        } else {
            (self.bind_expr(left, scope)?, self.bind_expr(right, scope)?)
        };
        Ok(Expr::Binary(op, Box::new(a), Box::new(b)))
    }

    pub(super) fn bind_value(&mut self, v: &ast::Value) -> Result<Expr> {
        use ast::Value as V;
        Ok(Expr::Literal(match v {
            V::Number(n, _) => return number_literal(n),
            V::SingleQuotedString(s) | V::EscapedStringLiteral(s) => Value::Text(s.clone()),
            V::DollarQuotedString(s) => Value::Text(s.value.clone()),
            V::HexStringLiteral(h) => match parse_text(&format!("\\x{h}"), DataType::Blob)? {
                v @ Value::Blob(_) => v,
                _ => return Err(QueryError::invalid_text("bad hex literal")),
            },
            V::Boolean(b) => Value::Boolean(*b),
            V::Null => Value::Null,
            V::Placeholder(p) => {
                let n = p
                    .strip_prefix('$')
                    .and_then(|d| d.parse::<usize>().ok())
                    .filter(|&n| (1..=MAX_PARAMS).contains(&n))
                    .ok_or_else(|| {
                        QueryError::not_supported(format!("parameter {p} (use $1, $2, ...)"))
                    })?;
                self.params = self.params.max(n);
                return Ok(Expr::Param(n - 1));
            }
            other => return Err(QueryError::not_supported(format!("literal {other}"))),
        }))
    }

    pub(super) fn bind_function(&mut self, f: &ast::Function, scope: &Scope) -> Result<Expr> {
        let t = templates()?;
        let probe = ast::Function {
            name: t.function.name.clone(),
            args: t.function.args.clone(),
            ..f.clone()
        };
        if probe != t.function {
            if f.over.is_some() {
                return Err(QueryError::not_supported("window functions"));
            }
            return Err(QueryError::not_supported(format!("function call {f}")));
        }
        let name = object_name(&f.name)?;
        let (args, distinct) = match &f.args {
            ast::FunctionArguments::List(list) if list.clauses.is_empty() => (
                &list.args,
                matches!(
                    list.duplicate_treatment,
                    Some(ast::DuplicateTreatment::Distinct)
                ),
            ),
            ast::FunctionArguments::None => {
                return Err(QueryError::not_supported(format!("function {name}")));
            }
            _ => return Err(QueryError::not_supported(format!("function call {f}"))),
        };
        let agg = match name.as_str() {
            "count" => Some(AggFunc::Count),
            "sum" => Some(AggFunc::Sum),
            "min" => Some(AggFunc::Min),
            "max" => Some(AggFunc::Max),
            "avg" => Some(AggFunc::Avg),
            _ => None,
        };
        if let Some(func) = agg {
            return self.bind_aggregate(func, &name, args, distinct, scope);
        }
        if distinct {
            return Err(QueryError::invalid(format!(
                "DISTINCT specified, but {name} is not an aggregate function"
            )));
        }
        let Some((func, min, max)) = Func::lookup(&name) else {
            return Err(QueryError::not_supported(format!("function {name}")));
        };
        let mut bound = Vec::with_capacity(args.len());
        for arg in args {
            match arg {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => {
                    bound.push(self.bind_expr(e, scope)?)
                }
                other => {
                    return Err(QueryError::not_supported(format!(
                        "function argument {other}"
                    )))
                }
            }
        }
        if bound.len() < min || bound.len() > max {
            return Err(QueryError::sql(
                "42883",
                format!("function {name} does not take {} arguments", bound.len()),
            ));
        }
        Ok(Expr::Func(func, bound))
    }

    pub(super) fn bind_aggregate(
        &mut self,
        func: AggFunc,
        name: &str,
        args: &[ast::FunctionArg],
        distinct: bool,
        scope: &Scope,
    ) -> Result<Expr> {
        if !self.agg_allowed {
            return Err(QueryError::sql(
                "42803",
                "aggregate functions are not allowed here",
            ));
        }
        if self.in_agg {
            return Err(QueryError::sql(
                "42803",
                "aggregate function calls cannot be nested",
            ));
        }
        let arg = match args {
            [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard)]
                if func == AggFunc::Count && !distinct =>
            {
                None
            }
            [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e))] => {
                self.in_agg = true;
                let bound = self.bind_expr(e, scope);
                self.in_agg = false;
                Some(bound?)
            }
            _ => {
                return Err(QueryError::sql(
                    "42883",
                    format!("function {name} takes exactly one argument"),
                ))
            }
        };
        let call = AggCall {
            func,
            arg,
            distinct,
        };
        let index = match self.aggs.iter().position(|c| *c == call) {
            Some(i) => i,
            None => {
                self.aggs.push(call);
                self.aggs.len() - 1
            }
        };
        Ok(Expr::Aggregate(index))
    }
}

pub(super) fn number_literal(n: &str) -> Result<Expr> {
    if let Ok(i) = n.parse::<i64>() {
        return Ok(Expr::Literal(Value::Integer(i)));
    }
    let is_integer_text = n
        .trim_start_matches('-')
        .chars()
        .all(|c| c.is_ascii_digit());
    if is_integer_text {
        return Err(QueryError::out_of_range(format!(
            "integer literal {n} is out of range for type bigint"
        )));
    }
    n.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite())
        .map(|r| Expr::Literal(Value::Real(r)))
        .ok_or_else(|| QueryError::invalid_text(format!("invalid number {n}")))
}

/// Types a text (or integer, for a REAL column) literal by the type it meets.
pub(super) fn coerce_literal(e: Expr, ty: Option<DataType>) -> Result<Expr> {
    match (e, ty) {
        (Expr::Literal(Value::Text(s)), Some(ty)) if ty != DataType::Text => {
            Ok(Expr::Literal(parse_text(&s, ty)?))
        }
        (e, _) => Ok(e),
    }
}

/// Maps a SQL type to a column type and its VARCHAR length.
pub fn map_type(ty: &ast::DataType) -> Result<(DataType, Option<u32>)> {
    use ast::DataType as T;
    Ok(match ty {
        T::Int(_)
        | T::Integer(_)
        | T::BigInt(_)
        | T::SmallInt(_)
        | T::Int2(_)
        | T::Int4(_)
        | T::Int8(_) => (DataType::Integer, None),
        T::Real
        | T::Float4
        | T::Float8
        | T::DoublePrecision
        | T::Double(ast::ExactNumberInfo::None) => (DataType::Real, None),
        T::Float(ast::ExactNumberInfo::None) => (DataType::Real, None),
        T::Text | T::String(None) => (DataType::Text, None),
        T::Varchar(len) | T::CharacterVarying(len) => match len {
            None => (DataType::Text, None),
            Some(ast::CharacterLength::IntegerLength { length, unit: None }) => {
                let n = u32::try_from(*length)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        QueryError::invalid(format!(
                            "length for type varchar must be at least 1, got {length}"
                        ))
                    })?;
                (DataType::Text, Some(n))
            }
            Some(other) => return Err(QueryError::not_supported(format!("VARCHAR({other})"))),
        },
        T::Boolean | T::Bool => (DataType::Boolean, None),
        T::Blob(None) | T::Bytea => (DataType::Blob, None),
        other => return Err(QueryError::not_supported(format!("type {other}"))),
    })
}

/// The output column name PostgreSQL gives an expression.
pub(super) fn column_name(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Identifier(ident) => ident_name(ident),
        ast::Expr::CompoundIdentifier(parts) => {
            parts.last().map_or_else(|| "?column?".into(), ident_name)
        }
        ast::Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map_or_else(|| "?column?".into(), ident_name),
        ast::Expr::Nested(inner) => column_name(inner),
        ast::Expr::Cast {
            expr, data_type, ..
        } => match &**expr {
            ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_) => column_name(expr),
            _ => data_type.to_string().to_lowercase(),
        },
        ast::Expr::Case { .. } => "case".into(),
        ast::Expr::Ceil { .. } => "ceil".into(),
        ast::Expr::Floor { .. } => "floor".into(),
        ast::Expr::Substring { .. } => "substring".into(),
        ast::Expr::Trim { .. } => "btrim".into(),
        _ => "?column?".into(),
    }
}
