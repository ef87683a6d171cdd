//! Reference ASTs of the supported statement shapes, parsed once: a
//! statement is compared with its template (with the parts the binder
//! reads swapped in), so an unknown clause is "not supported", never ignored.

use super::*;

/// Reference ASTs of the supported shapes.
pub(crate) struct Templates {
    pub(crate) query: ast::Query,
    pub(crate) select: ast::Select,
    pub(crate) table_factor: ast::TableFactor,
    pub(crate) function: ast::Function,
    pub(crate) insert: ast::Insert,
    pub(crate) update: ast::Update,
    pub(crate) delete: ast::Delete,
    pub(crate) create_table: ast::CreateTable,
    pub(crate) create_index: ast::CreateIndex,
}

pub(super) fn parse_template(sql: &str) -> std::result::Result<Statement, String> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or_else(|| "empty template".to_owned())
}

pub(super) fn build_templates() -> std::result::Result<Templates, String> {
    let bad = || "template of an unexpected shape".to_owned();
    let Statement::Query(query) = parse_template("SELECT f(1) FROM t")? else {
        return Err(bad());
    };
    let SetExpr::Select(select) = &*query.body else {
        return Err(bad());
    };
    let Some(ast::SelectItem::UnnamedExpr(ast::Expr::Function(function))) =
        select.projection.first()
    else {
        return Err(bad());
    };
    let table_factor = select.from.first().ok_or_else(bad)?.relation.clone();
    let Statement::Insert(insert) = parse_template("INSERT INTO t VALUES (1)")? else {
        return Err(bad());
    };
    let Statement::Update(update) = parse_template("UPDATE t SET a = 1")? else {
        return Err(bad());
    };
    let Statement::Delete(delete) = parse_template("DELETE FROM t")? else {
        return Err(bad());
    };
    let Statement::CreateTable(create_table) = parse_template("CREATE TABLE t (a INT)")? else {
        return Err(bad());
    };
    let Statement::CreateIndex(create_index) = parse_template("CREATE INDEX i ON t (a)")? else {
        return Err(bad());
    };
    Ok(Templates {
        function: function.clone(),
        select: (**select).clone(),
        query: (*query).clone(),
        table_factor,
        insert,
        update,
        delete,
        create_table,
        create_index,
    })
}

/// The reference ASTs, parsed once.
pub(crate) fn templates() -> Result<&'static Templates> {
    static TEMPLATES: OnceLock<std::result::Result<Templates, String>> = OnceLock::new();
    TEMPLATES
        .get_or_init(build_templates)
        .as_ref()
        .map_err(|e| QueryError::sql("XX000", format!("internal: {e}")))
}

pub(super) fn check_select_shape(select: &ast::Select) -> Result<()> {
    let t = templates()?;
    let probe = ast::Select {
        projection: t.select.projection.clone(),
        from: t.select.from.clone(),
        selection: None,
        group_by: t.select.group_by.clone(),
        having: None,
        distinct: None,
        ..select.clone()
    };
    if probe != t.select {
        return Err(QueryError::not_supported(format!(
            "SELECT clause in: {select}"
        )));
    }
    Ok(())
}

pub(super) fn check_wildcard_options(options: &ast::WildcardAdditionalOptions) -> Result<()> {
    if options.opt_ilike.is_some()
        || options.opt_exclude.is_some()
        || options.opt_except.is_some()
        || options.opt_replace.is_some()
        || options.opt_rename.is_some()
    {
        return Err(QueryError::not_supported("wildcard options"));
    }
    Ok(())
}
