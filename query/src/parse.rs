//! The parser front end: SQL text → sqlparser statements (PostgreSQL
//! dialect), each with its position and source text, and parse errors with
//! their line and column.

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::error::{QueryError, Result};

/// Deepest nesting the parser accepts (guards the stack).
pub const MAX_PARSE_DEPTH: usize = 64;
/// Deepest expression (operator chains plus parentheses) accepted: syntax
/// trees are walked recursively, so depth must stay well within a thread's stack.
pub const MAX_EXPRESSION_DEPTH: usize = 100;

/// One statement of a script.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    /// The statement.
    pub statement: Statement,
    /// 1-based line where it starts.
    pub line: u64,
    /// 1-based column where it starts.
    pub column: u64,
    /// Its source text (without the terminating semicolon).
    pub text: String,
}

/// Parses a script of statements separated by semicolons.
pub fn parse_script(sql: &str) -> Result<Vec<ParsedStatement>> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|e| parse_error(&ParserError::TokenizerError(e.to_string()), sql))?;
    check_nesting(&tokens)?;
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(MAX_PARSE_DEPTH)
        .with_tokens_with_locations(tokens);
    let offsets = LineOffsets::new(sql);
    let mut statements = Vec::new();
    let mut expecting_delimiter = false;
    loop {
        while parser.consume_token(&Token::SemiColon) {
            expecting_delimiter = false;
        }
        let next = parser.peek_token();
        match &next.token {
            Token::EOF => break,
            Token::Word(word) if expecting_delimiter && word.keyword == Keyword::END => break,
            _ => {}
        }
        if expecting_delimiter {
            return Err(QueryError::Parse {
                message: format!("expected end of statement, found {}", next.token),
                line: next.span.start.line,
                column: next.span.start.column,
            });
        }
        let start = next.span.start;
        let statement = parser.parse_statement().map_err(|e| parse_error(&e, sql))?;
        let end = parser.peek_token().span.start;
        let text = offsets.slice(sql, start, end).trim_end().to_owned();
        statements.push(ParsedStatement {
            statement,
            line: start.line,
            column: start.column,
            text,
        });
        expecting_delimiter = true;
    }
    Ok(statements)
}

/// Parses exactly one statement.
pub fn parse_one(sql: &str) -> Result<ParsedStatement> {
    let mut statements = parse_script(sql)?;
    match statements.len() {
        1 => Ok(statements.remove(0)),
        0 => Err(QueryError::invalid("empty query")),
        n => Err(QueryError::invalid(format!(
            "expected one statement, got {n} (use execute for scripts)"
        ))),
    }
}

/// Nesting of one parenthesis level while scanning tokens.
#[derive(Default)]
struct Level {
    /// Operators in the current comma-separated item.
    operators: usize,
    /// Deepest nested level inside the current item.
    child: usize,
    /// Deepest item so far.
    deepest: usize,
}

impl Level {
    fn end_item(&mut self) {
        self.deepest = self.deepest.max(self.operators + self.child);
        self.operators = 0;
        self.child = 0;
    }
}

/// Rejects statements whose expressions would nest deeper than
/// [`MAX_EXPRESSION_DEPTH`]: an upper bound from the tokens (operators of
/// one item chain up; parentheses add their content's depth), computed
/// before parsing because the parser builds operator chains without limit.
fn check_nesting(tokens: &[TokenWithSpan]) -> Result<()> {
    use sqlparser::keywords::Keyword as K;
    let mut stack = vec![Level::default()];
    for token in tokens {
        let depth_so_far = stack.last().map_or(0, |l| l.operators + l.child);
        if depth_so_far > MAX_EXPRESSION_DEPTH || stack.len() > MAX_EXPRESSION_DEPTH {
            return Err(QueryError::Parse {
                message: format!("expression nested deeper than {MAX_EXPRESSION_DEPTH} levels"),
                line: token.span.start.line,
                column: token.span.start.column,
            });
        }
        match &token.token {
            Token::LParen | Token::LBracket => stack.push(Level::default()),
            Token::RParen | Token::RBracket => {
                if let Some(mut level) = stack.pop().filter(|_| !stack.is_empty()) {
                    level.end_item();
                    if let Some(parent) = stack.last_mut() {
                        parent.child = parent.child.max(level.deepest + 1);
                    }
                }
            }
            Token::Comma | Token::SemiColon => {
                if let Some(level) = stack.last_mut() {
                    level.end_item();
                }
            }
            Token::Word(w) => {
                let level = stack.last_mut();
                match (w.keyword, level) {
                    (
                        K::AND
                        | K::OR
                        | K::NOT
                        | K::IS
                        | K::LIKE
                        | K::ILIKE
                        | K::IN
                        | K::BETWEEN
                        | K::COLLATE
                        | K::SIMILAR,
                        Some(level),
                    ) => level.operators += 1,
                    (
                        K::SELECT
                        | K::FROM
                        | K::WHERE
                        | K::GROUP
                        | K::HAVING
                        | K::ORDER
                        | K::LIMIT
                        | K::OFFSET
                        | K::VALUES
                        | K::SET
                        | K::RETURNING
                        | K::ON
                        | K::WHEN
                        | K::THEN
                        | K::ELSE
                        | K::END,
                        Some(level),
                    ) => level.end_item(),
                    _ => {}
                }
            }
            Token::Whitespace(_)
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::Placeholder(_) => {}
            Token::EOF | Token::Period => {}
            _ => {
                if let Some(level) = stack.last_mut() {
                    level.operators += 1;
                }
            }
        }
    }
    Ok(())
}

fn parse_error(err: &ParserError, sql: &str) -> QueryError {
    let text = match err {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => {
            return QueryError::Parse {
                message: "statement nested too deeply".into(),
                line: 1,
                column: 1,
            }
        }
    };
    match text.rsplit_once(" at Line: ") {
        Some((message, position)) => {
            let mut numbers = position
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse::<u64>().ok());
            let line = numbers.next().unwrap_or(1);
            let column = numbers.next().unwrap_or(1);
            QueryError::Parse {
                message: message.to_owned(),
                line,
                column,
            }
        }
        None => {
            // Errors at the end of input carry no position: point past the text.
            let line = sql.lines().count().max(1) as u64;
            let column = sql.lines().last().map_or(0, |l| l.chars().count()) as u64 + 1;
            QueryError::Parse {
                message: text,
                line,
                column,
            }
        }
    }
}

/// Byte offsets of line starts, to map a (line, column) to a byte offset.
struct LineOffsets {
    starts: Vec<usize>,
}

impl LineOffsets {
    fn new(sql: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        LineOffsets { starts }
    }

    fn offset(&self, sql: &str, at: Location) -> usize {
        if at.line == 0 {
            return sql.len();
        }
        let Some(&line_start) = self.starts.get(at.line as usize - 1) else {
            return sql.len();
        };
        let line = &sql[line_start..];
        line.char_indices()
            .nth(at.column.saturating_sub(1) as usize)
            .map_or(sql.len(), |(i, _)| line_start + i)
    }

    fn slice<'a>(&self, sql: &'a str, start: Location, end: Location) -> &'a str {
        let from = self.offset(sql, start);
        let to = self.offset(sql, end).max(from);
        &sql[from..to]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_carry_their_lines_and_text() {
        let script = "CREATE TABLE t (a INT);\n\n  INSERT INTO t VALUES (1);\nSELECT a\nFROM t";
        let parsed = parse_script(script).map_err(|e| e.to_string());
        let parsed = parsed.as_deref().unwrap_or(&[]);
        assert_eq!(parsed.len(), 3);
        assert_eq!((parsed[1].line, parsed[1].column), (3, 3));
        assert_eq!(parsed[1].text, "INSERT INTO t VALUES (1)");
        assert_eq!(parsed[2].text, "SELECT a\nFROM t");
    }

    #[test]
    fn parse_errors_have_positions() {
        let err = parse_script("SELECT 1;\nSELEC 2").err();
        match err {
            Some(QueryError::Parse { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected a parse error, got {other:?}"),
        }
        let err = parse_script("SELECT (1").err();
        assert!(matches!(err, Some(QueryError::Parse { .. })), "{err:?}");
        let deep = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
        assert!(matches!(parse_script(&deep), Err(QueryError::Parse { .. })));
    }
}
