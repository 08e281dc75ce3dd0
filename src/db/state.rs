//! The `user_connections.state` ENUM, read and written as text.

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::mysql::{Mysql, MysqlValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::SqlType;
use std::io::Write;

/// The SQL type of the `state` column (a MySQL `ENUM`).
#[derive(Debug, Clone, Copy, SqlType)]
#[diesel(mysql_type(name = "Enum"))]
pub struct StateSql;

/// A stored pair state: `'none'`, `'pending'` or `'connected'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromSqlRow, AsExpression)]
#[diesel(sql_type = StateSql)]
pub enum State {
    /// `'none'`.
    None,
    /// `'pending'`.
    Pending,
    /// `'connected'`.
    Connected,
}

impl ToSql<StateSql, Mysql> for State {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Mysql>) -> serialize::Result {
        out.write_all(match self {
            State::None => b"none",
            State::Pending => b"pending",
            State::Connected => b"connected",
        })?;
        Ok(IsNull::No)
    }
}

impl FromSql<StateSql, Mysql> for State {
    fn from_sql(value: MysqlValue<'_>) -> deserialize::Result<Self> {
        match value.as_bytes() {
            b"none" => Ok(State::None),
            b"pending" => Ok(State::Pending),
            b"connected" => Ok(State::Connected),
            other => Err(format!("unknown state {:?}", String::from_utf8_lossy(other)).into()),
        }
    }
}
