//! Backend-neutral SQL: the values bound to and read from statements, the
//! rows a query returns, and the transaction ([`Tx`]) every piece of store
//! code runs in, whichever backend (SQLite or PostgreSQL) is behind it.
//!
//! Statements are written once, in the SQL both engines share:
//! placeholders `?1`, `?2`… (the PostgreSQL backend rewrites them to `$1`,
//! `$2`…), `INSERT … ON CONFLICT DO NOTHING` rather than `INSERT OR
//! IGNORE`, no `rowid`. Integers are 64-bit, booleans are stored as 0 and
//! 1, byte strings as `BLOB`/`BYTEA`.
//!
//! Only wrapped blobs, hashes and public values are ever bound: a secret
//! in clear never reaches a statement (see the module docs of `store`).

use super::StoreError;

/// A value bound to a statement or read from a row.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// SQL `NULL`.
    Null,
    /// A 64-bit integer (booleans are 0 and 1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes: a wrapped blob, a hash, a certificate.
    Blob(Vec<u8>),
}

impl std::fmt::Debug for Value {
    /// Never prints bytes: only the kind and the length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Int(_) => f.write_str("Int"),
            Value::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Value::Blob(b) => write!(f, "Blob({} bytes)", b.len()),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<u16> for Value {
    fn from(v: u16) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for Value {
    fn from(v: &[u8; N]) -> Self {
        Value::Blob(v.to_vec())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl From<&Vec<u8>> for Value {
    fn from(v: &Vec<u8>) -> Self {
        Value::Blob(v.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The arguments of a statement: `args![a, b, c]` is a `&[Value]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($v)),*][..]
    };
}
pub(crate) use args;

/// A type a column reads as.
pub(crate) trait FromValue: Sized {
    /// `None` when the value is not of this type.
    fn from_value(v: Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    fn from_value(v: Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u64::try_from(i).ok())
    }
}

impl FromValue for u32 {
    fn from_value(v: Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}

impl FromValue for u16 {
    fn from_value(v: Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u16::try_from(i).ok())
    }
}

impl FromValue for bool {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Int(0) => Some(false),
            Value::Int(1) => Some(true),
            _ => None,
        }
    }
}

impl FromValue for String {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a query's result.
#[derive(Debug)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `i` (from 0) as a `T`; [`StoreError::Corrupt`] when it is
    /// missing or of another type.
    pub(crate) fn get<T: FromValue>(&mut self, i: usize) -> Result<T, StoreError> {
        let v = self
            .0
            .get_mut(i)
            .map(|v| std::mem::replace(v, Value::Null))
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} missing")))?;
        let kind = format!("{v:?}");
        T::from_value(v).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "column {i} holds {kind}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// A transaction of either backend: statements run in it, and it commits
/// only when the store code that got it returns `Ok`.
pub(crate) trait Tx {
    /// Runs a statement; how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError>;

    /// Runs a query; every row it returned.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError>;
}

impl dyn Tx + '_ {
    /// The first row of a query, if any.
    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        args: &[Value],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Whether a query returns a row.
    pub(crate) fn exists(&mut self, sql: &str, args: &[Value]) -> Result<bool, StoreError> {
        Ok(!self.query(sql, args)?.is_empty())
    }
}

/// `sql` with each `?N` placeholder as `$N` (PostgreSQL's form). Quoted
/// text is left alone.
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes_only() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
    }

    #[test]
    fn values_convert_both_ways_and_mismatches_are_corrupt() {
        let mut row = Row(vec![
            Value::from(true),
            Value::from(7u32),
            Value::from("x"),
            Value::from(Some(&b"ab"[..])),
            Value::from(None::<i64>),
            Value::Int(-1),
        ]);
        assert!(row.get::<bool>(0).unwrap());
        assert_eq!(row.get::<u32>(1).unwrap(), 7);
        assert_eq!(row.get::<String>(2).unwrap(), "x");
        assert_eq!(row.get::<Vec<u8>>(3).unwrap(), b"ab");
        assert_eq!(row.get::<Option<i64>>(4).unwrap(), None);
        assert!(matches!(row.get::<u64>(5), Err(StoreError::Corrupt(_))));
        assert!(matches!(row.get::<String>(9), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn debug_never_shows_bytes() {
        let text = format!("{:?}", Value::from(&b"SECRET"[..]));
        assert!(!text.contains("SECRET") && !text.contains("83"), "{text}");
    }
}
