//! What a change may contain, decided once at submit for the CLI, the API and files alike.
//!
//! Every statement is parsed with `sqlparser`'s MySQL dialect. A change is accepted only if each
//! entry is exactly one schema change of a kind its engine runs, on a table of the target
//! database, and, when it can lose data, only with `allow_destructive`. The result names the
//! table each statement touches and carries the change's fingerprint: the SHA-256 of the
//! normalised statements (the parser's rendering, so whitespace, comments and keyword case do
//! not change it).
//!
//! The names the target is given (database, environment) are checked here too: they reach
//! Spirit's `--database`, PlanetScale's API paths and log lines.

use std::fmt;

use sha2::{Digest, Sha256};
use sqlparser::ast::{
    AlterTableOperation, ObjectName, ObjectNamePart, ObjectType, Statement, TableConstraint,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::machine::apply::ApplySpec;
use crate::machine::EngineKind;

/// The longest database or environment name (MySQL's identifier limit).
pub const MAX_NAME: usize = 64;

/// The kinds of statement a change may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DdlKind {
    AlterTable,
    CreateTable,
    DropTable,
    CreateIndex,
    DropIndex,
    RenameTable,
}

impl DdlKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DdlKind::AlterTable => "ALTER TABLE",
            DdlKind::CreateTable => "CREATE TABLE",
            DdlKind::DropTable => "DROP TABLE",
            DdlKind::CreateIndex => "CREATE INDEX",
            DdlKind::DropIndex => "DROP INDEX",
            DdlKind::RenameTable => "RENAME TABLE",
        }
    }
}

/// One accepted statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedStatement {
    pub kind: DdlKind,
    /// The table it changes (for RENAME TABLE, the table renamed).
    pub table: String,
    /// The parser's rendering: what the fingerprint is computed over.
    pub normalised: String,
    /// Why it can lose data, when it can.
    pub destructive: Vec<String>,
}

/// An accepted change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedChange {
    pub statements: Vec<CheckedStatement>,
    pub fingerprint: String,
}

impl CheckedChange {
    /// The tables the change touches, each once, in statement order.
    pub fn tables(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.statements {
            if !out.contains(&s.table) {
                out.push(s.table.clone());
            }
        }
        out
    }

    /// The fingerprint of the statements at `positions` (indices into `statements`), as
    /// [`check_change`] gives for those statements submitted alone: a statement is checked and
    /// rendered without regard to its neighbours, so a rollout's operations are fingerprinted
    /// without parsing their part of the change again.
    pub fn fingerprint_of(&self, positions: &[usize]) -> Option<String> {
        let mut parts = Vec::with_capacity(positions.len());
        for &i in positions {
            parts.push(self.statements.get(i)?);
        }
        Some(fingerprint(parts))
    }
}

fn fingerprint<'a>(statements: impl IntoIterator<Item = &'a CheckedStatement>) -> String {
    let mut hash = Sha256::new();
    for s in statements {
        hash.update(s.normalised.as_bytes());
        hash.update(b";\n");
    }
    format!("sha256:{}", hex(&hash.finalize()))
}

/// Why a change or a name was refused. Statements are numbered from 1, in submission order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DdlError {
    #[error("the change has no statements")]
    NoStatements,
    #[error("statement {position} is empty")]
    Empty { position: usize },
    #[error("statement {position} cannot be parsed: {message}")]
    Unparsable { position: usize, message: String },
    #[error("statement {position} holds {count} statements; give one statement per entry")]
    Several { position: usize, count: usize },
    #[error("statement {position} is {what}, not a schema change (accepted: ALTER TABLE, CREATE TABLE, DROP TABLE, CREATE INDEX, DROP INDEX, RENAME TABLE)")]
    NotSchemaChange { position: usize, what: String },
    #[error("statement {position} names database {named:?}, but the change targets {target:?}")]
    OtherDatabase {
        position: usize,
        named: String,
        target: String,
    },
    #[error("statement {position}: {} {why}", engine_name(*engine))]
    EngineRefuses {
        position: usize,
        engine: EngineKind,
        why: String,
    },
    #[error("statement {position} {why}; submit with allow_destructive to apply it")]
    Destructive { position: usize, why: String },
    #[error("a {} change of several statements must be ALTER TABLE (or CREATE/DROP INDEX) only; statement {position} is {kind}", engine_name(*engine))]
    MixedChange {
        position: usize,
        engine: EngineKind,
        kind: &'static str,
    },
}

fn engine_name(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Spirit => "Spirit",
        EngineKind::PlanetScale => "PlanetScale",
    }
}

/// Why a target name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?} {why}")]
pub struct NameError {
    pub field: &'static str,
    pub value: String,
    pub why: String,
}

/// Check a database or environment name: 1 to 64 ASCII letters, digits, `_`, `-` (and `$` for
/// databases, as MySQL allows it unquoted). These names are used unquoted by the engines.
pub fn check_name(field: &'static str, value: &str) -> Result<(), NameError> {
    let refuse = |why: String| NameError {
        field,
        value: value.chars().take(80).collect(),
        why,
    };
    if value.is_empty() {
        return Err(refuse("is empty".into()));
    }
    let n = value.chars().count();
    if n > MAX_NAME {
        return Err(refuse(format!("has {n} characters; at most {MAX_NAME}")));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if let Some(bad) = value
        .chars()
        .find(|&c| !(allowed(c) || (field == "database" && c == '$')))
    {
        return Err(refuse(format!(
            "contains {bad:?}; use ASCII letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

/// Split a script (a `--file`) into statements at the semicolons the tokenizer sees, so a `;`
/// inside a string literal, a quoted name or a comment does not split. Comment-only pieces are
/// dropped.
pub fn split_script(text: &str) -> Result<Vec<String>, DdlError> {
    let tokens = Tokenizer::new(&MySqlDialect {}, text)
        .tokenize()
        .map_err(|e| DdlError::Unparsable {
            position: 1,
            message: parser_message(&e.to_string()),
        })?;
    let mut out = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    let mut flush = |current: &mut Vec<Token>| {
        let meaningful = current.iter().any(|t| !matches!(t, Token::Whitespace(_)));
        if meaningful {
            let text: String = current.iter().map(Token::to_string).collect();
            out.push(text.trim().to_string());
        }
        current.clear();
    };
    for token in tokens {
        if token == Token::SemiColon {
            flush(&mut current);
        } else if !(current.is_empty() && matches!(token, Token::Whitespace(_))) {
            // Leading comments and blank lines belong to no statement.
            current.push(token);
        }
    }
    flush(&mut current);
    Ok(out)
}

/// Check a change for `engine` on `database`. See the module documentation.
pub fn check_change(
    engine: EngineKind,
    database: &str,
    ddl: &[String],
    allow_destructive: bool,
) -> Result<CheckedChange, DdlError> {
    if ddl.is_empty() {
        return Err(DdlError::NoStatements);
    }
    let mut statements = Vec::with_capacity(ddl.len());
    for (i, text) in ddl.iter().enumerate() {
        let position = i + 1;
        let checked = check_statement(engine, database, position, text)?;
        if let (false, Some(why)) = (allow_destructive, checked.destructive.first()) {
            return Err(DdlError::Destructive {
                position,
                why: why.clone(),
            });
        }
        statements.push(checked);
    }
    if engine == EngineKind::Spirit && statements.len() > 1 {
        // Spirit runs several statements as one atomic change only when all are ALTERs
        // (block/spirit pkg/statement/statement.go, NewWithOptions: "when performing atomic
        // schema changes, all statements must be of type ALTER TABLE"; CREATE/DROP INDEX are
        // rewritten to ALTER TABLE there first).
        if let Some((i, s)) = statements.iter().enumerate().find(|(_, s)| {
            !matches!(
                s.kind,
                DdlKind::AlterTable | DdlKind::CreateIndex | DdlKind::DropIndex
            )
        }) {
            return Err(DdlError::MixedChange {
                position: i + 1,
                engine,
                kind: s.kind.as_str(),
            });
        }
    }
    let fingerprint = fingerprint(&statements);
    Ok(CheckedChange {
        statements,
        fingerprint,
    })
}

/// Why a stored change may not be handed to an engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("it was stored without a reviewed fingerprint; submit it again")]
    Unpinned,
    #[error("it no longer passes the checks made at submit: {0}")]
    Unchecked(DdlError),
    #[error("its statements now fingerprint as {now}, not as the reviewed {reviewed}")]
    Drifted { reviewed: String, now: String },
}

/// Whether an apply's stored change is still the one reviewed at submit: checked again as at
/// submit and fingerprinted again. Its destructive statements were gated when it was
/// submitted, and the fingerprint covers them, so they are allowed here.
pub fn pinned(engine: EngineKind, spec: &ApplySpec) -> Result<(), PinError> {
    let reviewed = spec.fingerprint.as_deref().ok_or(PinError::Unpinned)?;
    let now = recheck(engine, &spec.target.database, &spec.ddl)?;
    if now != reviewed {
        return Err(PinError::Drifted {
            reviewed: reviewed.to_string(),
            now,
        });
    }
    Ok(())
}

/// The check at submit, made again on a stored change, as its fingerprint. Every read of an
/// owned apply pins its change, and a driver reads before every decision: the answer is a
/// function of the text alone, so the last few answers of this thread are kept (the stored
/// text is the key, compared in full: a drifted text is checked afresh).
fn recheck(engine: EngineKind, database: &str, ddl: &[String]) -> Result<String, PinError> {
    type Key = (EngineKind, String, Vec<String>);
    const KEPT: usize = 64;
    thread_local! {
        static RECENT: std::cell::RefCell<Vec<(Key, Result<String, DdlError>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let hit = RECENT.with(|r| {
        r.borrow()
            .iter()
            .find(|((e, db, d), _)| *e == engine && db == database && d.as_slice() == ddl)
            .map(|(_, answer)| answer.clone())
    });
    let answer = match hit {
        Some(answer) => answer,
        None => {
            let answer = check_change(engine, database, ddl, true).map(|c| c.fingerprint);
            RECENT.with(|r| {
                let mut r = r.borrow_mut();
                if r.len() == KEPT {
                    drop(r.remove(0));
                }
                r.push(((engine, database.to_string(), ddl.to_vec()), answer.clone()));
            });
            answer
        }
    };
    answer.map_err(PinError::Unchecked)
}

/// The parser's message without its "sql parser error: " prefix (the caller says what failed).
fn parser_message(raw: &str) -> String {
    raw.trim_start_matches("sql parser error: ").to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_statement(
    engine: EngineKind,
    database: &str,
    position: usize,
    text: &str,
) -> Result<CheckedStatement, DdlError> {
    let parsed = Parser::parse_sql(&MySqlDialect {}, text).map_err(|e| DdlError::Unparsable {
        position,
        message: parser_message(&e.to_string()),
    })?;
    let statement = match parsed.as_slice() {
        [] => return Err(DdlError::Empty { position }),
        [one] => one,
        many => {
            return Err(DdlError::Several {
                position,
                count: many.len(),
            })
        }
    };
    let table_of = |name: &ObjectName| table_in(name, database, position);
    let refuse = |why: &str| DdlError::EngineRefuses {
        position,
        engine,
        why: why.to_string(),
    };
    let mut destructive = Vec::new();
    let (kind, table) = match statement {
        Statement::AlterTable(alter) => {
            let table = table_of(&alter.name)?;
            if alter.operations.is_empty() {
                return Err(refuse("needs an ALTER TABLE that changes something"));
            }
            for op in &alter.operations {
                alter_operation(engine, &table, op, &mut destructive)
                    .map_err(|why| refuse(&why))?;
            }
            (DdlKind::AlterTable, table)
        }
        Statement::CreateTable(create) => {
            if create.temporary {
                return Err(not_schema_change(position, "CREATE TEMPORARY TABLE"));
            }
            if create.query.is_some() {
                return Err(refuse(
                    "does not run CREATE TABLE … AS SELECT (it copies rows, not schema)",
                ));
            }
            if create.or_replace {
                destructive.push(format!(
                    "replaces table {} and its rows",
                    last_part(&create.name)
                ));
            }
            (DdlKind::CreateTable, table_of(&create.name)?)
        }
        Statement::CreateIndex(index) => (DdlKind::CreateIndex, table_of(&index.table_name)?),
        Statement::Drop {
            object_type,
            names,
            table,
            temporary,
            ..
        } => match (object_type, names.as_slice()) {
            (ObjectType::Table, _) if *temporary => {
                return Err(not_schema_change(position, "DROP TEMPORARY TABLE"))
            }
            (ObjectType::Table, [one]) => {
                let t = table_of(one)?;
                destructive.push(format!("drops table {t} and every row in it"));
                (DdlKind::DropTable, t)
            }
            (ObjectType::Table, _) => {
                return Err(DdlError::Several {
                    position,
                    count: names.len(),
                })
            }
            (ObjectType::Index, [index]) => {
                let Some(on) = table else {
                    return Err(refuse("needs DROP INDEX … ON <table>"));
                };
                let t = table_of(on)?;
                destructive.push(format!("drops index {} of {t}", last_part(index)));
                (DdlKind::DropIndex, t)
            }
            (other, _) => {
                return Err(not_schema_change(position, &format!("DROP {other}")));
            }
        },
        Statement::RenameTable(renames) => match renames.as_slice() {
            [one] => {
                let from = table_of(&one.old_name)?;
                table_of(&one.new_name)?;
                (DdlKind::RenameTable, from)
            }
            _ => {
                return Err(DdlError::Several {
                    position,
                    count: renames.len(),
                })
            }
        },
        other => return Err(not_schema_change(position, &statement_kind(other))),
    };
    Ok(CheckedStatement {
        kind,
        table,
        normalised: statement.to_string(),
        destructive,
    })
}

/// One clause of an ALTER TABLE: refused (Err with why), or accepted with any data it may lose
/// appended to `destructive`.
fn alter_operation(
    engine: EngineKind,
    table: &str,
    op: &AlterTableOperation,
    destructive: &mut Vec<String>,
) -> Result<(), String> {
    use AlterTableOperation as Op;
    let spirit = engine == EngineKind::Spirit;
    match op {
        Op::DropColumn { column_names, .. } => {
            for c in column_names {
                destructive.push(format!("drops column {table}.{c} and its data"));
            }
        }
        Op::DropIndex { name } => destructive.push(format!("drops index {name} of {table}")),
        Op::DropPrimaryKey { .. } if spirit => {
            // block/spirit pkg/migration/check/primarykey.go: "dropping primary key is not supported".
            return Err("does not drop a primary key".into());
        }
        Op::DropPrimaryKey { .. } => destructive.push(format!("drops the primary key of {table}")),
        Op::DropForeignKey { name, .. } => {
            destructive.push(format!("drops foreign key {name} of {table}"))
        }
        Op::DropConstraint { name, .. } => {
            destructive.push(format!("drops constraint {name} of {table}"))
        }
        Op::ModifyColumn { col_name, .. } => destructive.push(format!(
            "redefines column {table}.{col_name}, which can truncate or convert its data"
        )),
        Op::ChangeColumn { old_name, .. } => destructive.push(format!(
            "redefines column {table}.{old_name}, which can truncate or convert its data"
        )),
        Op::DropPartitions { .. } => {
            destructive.push(format!("drops partitions of {table} and their rows"))
        }
        Op::RenameTable { .. } if spirit => {
            // block/spirit pkg/migration/check/rename.go: "table renames are not supported".
            return Err("does not rename a table inside ALTER TABLE (use RENAME TABLE)".into());
        }
        Op::Algorithm { .. } | Op::Lock { .. } if spirit => {
            // block/spirit pkg/statement/statement.go, AlterContainsUnsupportedClause:
            // "ALTER contains unsupported clause(s): ALGORITHM=, LOCK=".
            return Err("does not take ALGORITHM= or LOCK= (it chooses how to copy)".into());
        }
        Op::AddConstraint {
            constraint: TableConstraint::ForeignKey(_),
            ..
        } if spirit => {
            // block/spirit pkg/migration/check/foreignkey.go refuses foreign keys.
            return Err("does not add foreign keys".into());
        }
        _ => {}
    }
    Ok(())
}

fn not_schema_change(position: usize, what: &str) -> DdlError {
    DdlError::NotSchemaChange {
        position,
        what: what.to_string(),
    }
}

/// A short name for a statement that is not a schema change: its leading keyword (two for
/// CREATE/DROP/ALTER/SHOW, e.g. `DROP DATABASE`).
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first @ ("CREATE" | "DROP" | "ALTER" | "SHOW"), second] => format!("{first} {second}"),
        [first, ..] => first.to_string(),
        [] => "an empty statement".into(),
    }
}

fn last_part(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => ident.value.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// The table a `[database.]table` name refers to; another database is refused.
fn table_in(name: &ObjectName, database: &str, position: usize) -> Result<String, DdlError> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(ident) => ident.value.clone(),
            other => other.to_string(),
        })
        .collect();
    match parts.as_slice() {
        [table] => Ok(table.clone()),
        [schema, table] if schema == database => Ok(table.clone()),
        [schema, _] => Err(DdlError::OtherDatabase {
            position,
            named: schema.clone(),
            target: database.to_string(),
        }),
        _ => Err(DdlError::Unparsable {
            position,
            message: format!("{name} is not a [database.]table name"),
        }),
    }
}

impl fmt::Display for DdlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::apply::Target;

    fn spec(ddl: &str, fingerprint: Option<String>) -> ApplySpec {
        ApplySpec {
            identifier: "apply-1".into(),
            target: Target {
                database: "shop".into(),
                environment: "prod".into(),
            },
            deployment: String::new(),
            ddl: vec![ddl.into()],
            fingerprint,
        }
    }

    fn reviewed(ddl: &str) -> Option<String> {
        Some(
            check_change(EngineKind::Spirit, "shop", &[ddl.into()], true)
                .unwrap()
                .fingerprint,
        )
    }

    #[test]
    fn a_part_is_fingerprinted_as_if_submitted_alone() {
        let ddl: Vec<String> = [
            "ALTER TABLE users ADD COLUMN c INT",
            "alter   table `orders` add index (placed_at)",
            "CREATE INDEX i ON users (c)",
        ]
        .map(String::from)
        .to_vec();
        let whole = check_change(EngineKind::Spirit, "shop", &ddl, true).unwrap();
        for part in [
            vec![0],
            vec![1],
            vec![2],
            vec![0, 2],
            vec![1, 2],
            vec![0, 1, 2],
        ] {
            let alone: Vec<String> = part.iter().map(|i| ddl[*i].clone()).collect();
            let expected = check_change(EngineKind::Spirit, "shop", &alone, true)
                .unwrap()
                .fingerprint;
            assert_eq!(whole.fingerprint_of(&part), Some(expected), "part {part:?}");
        }
        assert_eq!(
            whole.fingerprint_of(&[0, 1, 2]),
            Some(whole.fingerprint.clone())
        );
        assert_eq!(whole.fingerprint_of(&[3]), None);
    }

    #[test]
    fn the_reviewed_change_is_pinned_however_it_is_written() {
        let fp = reviewed("ALTER TABLE users ADD COLUMN c INT");
        assert_eq!(
            pinned(
                EngineKind::Spirit,
                &spec("alter table users add column c int", fp)
            ),
            Ok(())
        );
    }

    #[test]
    fn a_destructive_change_reviewed_with_its_gate_stays_pinned() {
        let fp = reviewed("ALTER TABLE users DROP COLUMN c");
        assert_eq!(
            pinned(
                EngineKind::Spirit,
                &spec("ALTER TABLE users DROP COLUMN c", fp)
            ),
            Ok(())
        );
    }

    #[test]
    fn an_altered_change_is_not() {
        let fp = reviewed("ALTER TABLE users ADD COLUMN c INT");
        let got = pinned(
            EngineKind::Spirit,
            &spec("ALTER TABLE users ADD COLUMN d INT", fp.clone()),
        );
        assert!(
            matches!(&got, Err(PinError::Drifted { reviewed, now }) if Some(reviewed) == fp.as_ref() && now.starts_with("sha256:") && Some(now) != fp.as_ref()),
            "{got:?}"
        );
    }

    #[test]
    fn a_change_that_no_longer_passes_the_checks_is_not() {
        let fp = reviewed("ALTER TABLE users ADD COLUMN c INT");
        let got = pinned(EngineKind::Spirit, &spec("DELETE FROM users", fp));
        assert!(matches!(got, Err(PinError::Unchecked(_))), "{got:?}");
        assert!(got
            .unwrap_err()
            .to_string()
            .starts_with("it no longer passes the checks made at submit: statement 1 is DELETE"));
    }

    #[test]
    fn a_change_without_a_fingerprint_is_not() {
        assert_eq!(
            pinned(
                EngineKind::Spirit,
                &spec("ALTER TABLE users ADD COLUMN c INT", None)
            ),
            Err(PinError::Unpinned)
        );
    }
}
