//! The server's binary log, as the follower reads it (see
//! `docs/consistency.md#the-binary-log`): a replication connection through
//! mysql_async's binlog client (its event decoder, not ours), turned into
//! the users and pairs that committed transactions changed and the places
//! between transactions where following may stop and resume; and the
//! follower's control connection, which holds the one-follower lock, asks
//! the server where its log ends, and stores the position. Nothing here
//! knows of the cache.
//!
//! Only row events of `users` and `user_connections` in the service's own
//! database count: other tables, other databases and connstatus's own
//! tables are skipped. The log must be in ROW format (statement events
//! name no rows).

use std::borrow::Cow;
use std::fmt;

use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts, Value};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{Pair, Subject, UserId};

/// A place in the binary log: before the event at byte `pos` of `file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The log file's name, e.g. `mariadb-bin.000003`.
    pub file: String,
    /// A byte offset in it.
    pub pos: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

impl Position {
    /// The numeric suffix of the file name (`mariadb-bin.000003` → 3), for
    /// a gauge; 0 when there is none.
    pub fn file_number(&self) -> u64 {
        self.file
            .rsplit('.')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// Why the log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BinlogError {
    /// The server no longer has the position asked for (its files were
    /// purged), or cannot read from it.
    #[error("the binary log has no position {0}: {1}")]
    Unreadable(Position, String),
    /// The server or the connection failed.
    #[error("{0}")]
    Failed(String),
}

impl From<mysql_async::Error> for BinlogError {
    fn from(e: mysql_async::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<std::io::Error> for BinlogError {
    fn from(e: std::io::Error) -> Self {
        Self::Failed(format!("binlog event: {e}"))
    }
}

/// `ER_MASTER_FATAL_ERROR_READING_BINLOG`: the position is not in the log
/// (purged files), or the log cannot be read from there.
const FATAL_READING_BINLOG: u16 = 1236;

/// What the log says, one step at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Rows of `users` or `user_connections` changed, in a transaction
    /// whose end follows: each subject with the version the change gave it
    /// (0 when the log does not say). The log reaches a follower before the
    /// commit is visible to readers (the server writes its log between
    /// the engine's prepare and commit), so a refresh must not settle for
    /// an older version than this.
    Changed(Vec<(Subject, u64)>),
    /// The end of a transaction (or of a statement outside one): following
    /// may resume at `position`. `at` is when it was written (Unix seconds).
    Boundary {
        /// Where the next transaction starts.
        position: Position,
        /// The event's timestamp.
        at: u32,
    },
}

/// Where `users.id` and `user_connections.(user_low, user_high)` sit in a
/// row image: by name when the log carries column names
/// (`binlog_row_metadata=FULL`), else as `@<ordinal>`, the decoder's name
/// for an unnamed column.
#[derive(Debug)]
struct KeyColumns {
    user_id: [Vec<u8>; 2],
    user_version: [Vec<u8>; 2],
    low: [Vec<u8>; 2],
    high: [Vec<u8>; 2],
    pair_version: [Vec<u8>; 2],
}

impl KeyColumns {
    /// Reads the columns' ordinals from `information_schema`. The contract
    /// lets writers add columns, never rename or drop these; added columns
    /// go after them, so the ordinals hold for the whole log.
    async fn of(conn: &mut Conn, database: &str) -> Result<Self, BinlogError> {
        let rows: Vec<(String, String, u64)> = conn
            .exec(
                "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND ((TABLE_NAME = 'users' AND COLUMN_NAME IN ('id', 'version')) \
                 OR (TABLE_NAME = 'user_connections' AND COLUMN_NAME IN ('user_low', 'user_high', 'version')))",
                (database,),
            )
            .await?;
        let find = |table: &str, column: &str| -> Result<[Vec<u8>; 2], BinlogError> {
            let ordinal = rows
                .iter()
                .find(|(t, c, _)| t == table && c == column)
                .map(|(_, _, o)| o.saturating_sub(1))
                .ok_or_else(|| {
                    BinlogError::Failed(format!(
                        "{database}.{table}.{column} not found: is the database migrated?"
                    ))
                })?;
            Ok([
                column.as_bytes().to_vec(),
                format!("@{ordinal}").into_bytes(),
            ])
        };
        Ok(Self {
            user_id: find("users", "id")?,
            user_version: find("users", "version")?,
            low: find("user_connections", "user_low")?,
            high: find("user_connections", "user_high")?,
            pair_version: find("user_connections", "version")?,
        })
    }
}

/// The value of the column named one of `names` in `row`, as an id.
fn id_in(row: &BinlogRow, names: &[Vec<u8>; 2]) -> Option<u64> {
    let index = row
        .columns_ref()
        .iter()
        .position(|c| names.iter().any(|n| c.name_ref() == n.as_slice()))?;
    match row.as_ref(index)? {
        // Without signedness metadata an unsigned BIGINT decodes as signed:
        // the bits are the id's.
        BinlogValue::Value(Value::Int(i)) => Some(*i as u64),
        BinlogValue::Value(Value::UInt(u)) => Some(*u),
        _ => None,
    }
}

/// A reader of the log from a position on.
pub struct Reader {
    stream: BinlogStream,
    database: String,
    columns: KeyColumns,
    /// Where the reader is: the file, and the end of the last event read.
    at: Position,
    in_transaction: bool,
    /// Whether this stream's format description has come (until then the
    /// reader does not know the events carry checksums).
    described: bool,
    /// Events read so far (of any kind: a stream of others' changes is not
    /// a stalled one).
    events: u64,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("database", &self.database)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

/// The database named by `url` (the one whose tables are followed).
pub fn database_of(url: &SecretString) -> Result<String, String> {
    let opts = Opts::from_url(url.expose_secret()).map_err(|e| format!("DATABASE_URL: {e}"))?;
    opts.db_name()
        .map(str::to_owned)
        .ok_or_else(|| "DATABASE_URL names no database".to_owned())
}

impl Reader {
    /// Connects to the server at `url` as a replica with id `server_id`
    /// and asks for its log from `from` on.
    pub async fn open(
        url: &SecretString,
        server_id: u32,
        from: &Position,
    ) -> Result<Self, BinlogError> {
        let opts =
            Opts::from_url(url.expose_secret()).map_err(|e| BinlogError::Failed(e.to_string()))?;
        let database = opts
            .db_name()
            .map(str::to_owned)
            .ok_or_else(|| BinlogError::Failed("DATABASE_URL names no database".into()))?;
        let mut conn = Conn::new(opts).await?;
        let columns = KeyColumns::of(&mut conn, &database).await?;
        let request = BinlogStreamRequest::new(server_id)
            .with_filename(from.file.as_bytes())
            .with_pos(from.pos);
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| unreadable(e, from))?;
        Ok(Self {
            stream,
            database,
            columns,
            at: from.clone(),
            in_transaction: false,
            described: false,
            events: 0,
        })
    }

    /// How many events it has read.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The next step: rows of ours changed, or a transaction ended. Events
    /// of no interest are read past. `None`: the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Step>, BinlogError> {
        loop {
            let Some(event) = self.stream.next().await else {
                return Ok(None);
            };
            let event = event.map_err(|e| unreadable(e, &self.at))?;
            self.events += 1;
            let header = event.header();
            let (end, at) = (u64::from(header.log_pos()), header.timestamp());
            let data = event.read_data()?;
            // Events the server makes up for this stream (the first rotate,
            // the format description) carry no place of their own.
            if end > 0 {
                self.at.pos = end;
            }
            match data {
                Some(EventData::FormatDescriptionEvent(_)) => self.described = true,
                // The rotate the server makes up at the stream's start only
                // repeats the position asked for, and comes before the
                // format description (its name would still carry the
                // checksum's bytes). Every later one counts, made up or not:
                // a file that ended without a rotate of its own (a restart, a
                // crash) is followed by a made-up one naming the next file.
                Some(EventData::RotateEvent(rotate)) if end > 0 || self.described => {
                    self.at = Position {
                        file: rotate.name().into_owned(),
                        pos: rotate.position(),
                    };
                }
                Some(EventData::XidEvent(_)) => {
                    self.in_transaction = false;
                    return Ok(Some(self.boundary(at)));
                }
                Some(EventData::QueryEvent(query)) => {
                    let sql = query.query();
                    let sql = sql.trim();
                    if sql.eq_ignore_ascii_case("BEGIN") {
                        self.in_transaction = true;
                        continue;
                    }
                    let ends = sql.eq_ignore_ascii_case("COMMIT")
                        || sql.eq_ignore_ascii_case("ROLLBACK")
                        || !self.in_transaction;
                    if self.in_transaction && query.schema() == self.database.as_str() {
                        // A statement-logged change (binlog_format=STATEMENT
                        // or MIXED for this session) names no rows.
                        tracing::warn!(
                            statement = %truncate(sql),
                            "binlog: a statement-format event in the followed database; its rows cannot be refreshed (the log must be in ROW format)"
                        );
                        crate::meters::follower_statement_events();
                    }
                    if ends {
                        self.in_transaction = false;
                        return Ok(Some(self.boundary(at)));
                    }
                }
                Some(EventData::RowsEvent(rows)) => {
                    let changed = self.changed(&rows)?;
                    if !changed.is_empty() {
                        return Ok(Some(Step::Changed(changed)));
                    }
                }
                _ => {}
            }
        }
    }

    fn boundary(&self, at: u32) -> Step {
        Step::Boundary {
            position: self.at.clone(),
            at,
        }
    }

    /// The subjects a rows event changed, if it is of one of our tables,
    /// with the version each change gave it.
    fn changed(&self, rows: &RowsEventData<'_>) -> Result<Vec<(Subject, u64)>, BinlogError> {
        let Some(table) = self.stream.get_tme(rows.table_id()) else {
            return Err(BinlogError::Failed(
                "binlog: a rows event without its table map".into(),
            ));
        };
        if table.database_name_raw() != self.database.as_bytes() {
            return Ok(Vec::new());
        }
        let users = match table.table_name_raw() {
            b"users" => true,
            b"user_connections" => false,
            _ => return Ok(Vec::new()),
        };
        let columns = &self.columns;
        let subject_of = |image: &BinlogRow| {
            if users {
                id_in(image, &columns.user_id)
                    .and_then(UserId::new)
                    .map(Subject::User)
            } else {
                let low = id_in(image, &columns.low).and_then(UserId::new);
                let high = id_in(image, &columns.high).and_then(UserId::new);
                low.zip(high)
                    .and_then(|(l, h)| Pair::new(l, h))
                    .map(Subject::Pair)
            }
        };
        let version_names = if users {
            &columns.user_version
        } else {
            &columns.pair_version
        };
        let mut changed: Vec<(Subject, u64)> = Vec::new();
        for row in rows.rows(table) {
            let (before, after) = row?;
            // The key is in the before image of an update or delete and in
            // the after image of an insert; an update that changed the key
            // changed both. The version a change gave is the after image's;
            // a deleted user's is one more than its last (its tombstone's).
            let gone_version = before
                .as_ref()
                .filter(|_| after.is_none())
                .and_then(|b| id_in(b, version_names))
                .map_or(0, |v| v + 1);
            let new_version = after
                .as_ref()
                .and_then(|a| id_in(a, version_names))
                .unwrap_or(gone_version);
            let (was, is) = (
                before.as_ref().and_then(subject_of),
                after.as_ref().and_then(subject_of),
            );
            // A key that changed (no writer should) left nothing to wait
            // for under the old one.
            let old_key = was.filter(|w| is.is_some() && Some(*w) != is);
            let now = is.or(was).map(|s| (s, new_version));
            for (subject, version) in now.into_iter().chain(old_key.map(|s| (s, 0))) {
                match changed.last_mut() {
                    Some((last, at_least)) if *last == subject => {
                        *at_least = (*at_least).max(version);
                    }
                    _ => changed.push((subject, version)),
                }
            }
        }
        Ok(changed)
    }
}

/// A read error, as [`BinlogError::Unreadable`] when the server says the
/// position cannot be read.
fn unreadable(e: mysql_async::Error, at: &Position) -> BinlogError {
    match &e {
        mysql_async::Error::Server(s) if s.code == FATAL_READING_BINLOG => {
            BinlogError::Unreadable(at.clone(), s.message.clone())
        }
        _ => BinlogError::Failed(e.to_string()),
    }
}

fn truncate(sql: &str) -> Cow<'_, str> {
    match sql.char_indices().nth(120) {
        Some((i, _)) => Cow::Owned(format!("{}…", &sql[..i])),
        None => Cow::Borrowed(sql),
    }
}

/// How the server keeps its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// `@@log_bin`.
    pub enabled: bool,
    /// `@@binlog_format` (`ROW` is needed).
    pub format: String,
    /// `@@server_id`.
    pub server_id: u32,
    /// `@@binlog_row_image` (`FULL` is needed: a deleted row's version is
    /// in its before image only then).
    pub row_image: String,
}

impl LogSettings {
    /// Why the follower cannot use this log, if it cannot.
    pub fn unusable(&self) -> Option<String> {
        if !self.enabled {
            Some("the server's binary log is off (log_bin)".to_owned())
        } else if !self.format.eq_ignore_ascii_case("ROW") {
            Some(format!(
                "binlog_format is {}, not ROW: changed rows cannot be seen",
                self.format
            ))
        } else if !self.row_image.eq_ignore_ascii_case("FULL") {
            Some(format!(
                "binlog_row_image is {}, not FULL: a deleted row's version cannot be seen",
                self.row_image
            ))
        } else {
            None
        }
    }
}

/// The follower's control connections: one to the primary holds the lock
/// (for as long as the connection lives: a follower that dies loses it at
/// once) and keeps the stored position; one to the server whose log is read
/// (the same one unless the log is a replica's) asks where the log ends.
pub struct Control {
    conn: Conn,
    log: Option<Conn>,
    lock: String,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Connects to the database at `url` (the primary), and to the one at
    /// `log_url` when that is another server.
    pub async fn connect(url: &SecretString, log_url: &SecretString) -> Result<Self, BinlogError> {
        let opts =
            Opts::from_url(url.expose_secret()).map_err(|e| BinlogError::Failed(e.to_string()))?;
        let database = opts.db_name().unwrap_or_default().to_owned();
        let conn = Conn::new(opts).await?;
        let log = if log_url.expose_secret() == url.expose_secret() {
            None
        } else {
            let opts = Opts::from_url(log_url.expose_secret())
                .map_err(|e| BinlogError::Failed(e.to_string()))?;
            Some(Conn::new(opts).await?)
        };
        Ok(Self {
            conn,
            log,
            lock: lock_name(&database),
        })
    }

    /// The connection to the server whose log is read.
    fn log(&mut self) -> &mut Conn {
        self.log.as_mut().unwrap_or(&mut self.conn)
    }

    /// How the server whose log is read keeps it.
    pub async fn log_settings(&mut self) -> Result<LogSettings, BinlogError> {
        let row: Option<(u64, String, u32, String)> = self
            .log()
            .query_first("SELECT @@log_bin, @@binlog_format, @@server_id, @@binlog_row_image")
            .await?;
        let (enabled, format, server_id, row_image) =
            row.ok_or_else(|| BinlogError::Failed("no log settings".into()))?;
        Ok(LogSettings {
            enabled: enabled == 1,
            format,
            server_id,
            row_image,
        })
    }

    /// Takes the follower lock if no one holds it; true when this
    /// connection holds it.
    pub async fn try_lock(&mut self) -> Result<bool, BinlogError> {
        let got: Option<Option<u8>> = self
            .conn
            .exec_first("SELECT GET_LOCK(?, 0)", (&self.lock,))
            .await?;
        Ok(got.flatten() == Some(1))
    }

    /// Whether this connection still holds the lock.
    pub async fn holds_lock(&mut self) -> Result<bool, BinlogError> {
        let held: Option<Option<u8>> = self
            .conn
            .exec_first("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (&self.lock,))
            .await?;
        Ok(held.flatten() == Some(1))
    }

    /// Where the server's log ends now.
    pub async fn end(&mut self) -> Result<Position, BinlogError> {
        // `SHOW MASTER STATUS` is `SHOW BINARY LOG STATUS` from MySQL 8.4 on.
        let log = self.log();
        let row: Option<mysql_async::Row> = match log.query_first("SHOW MASTER STATUS").await {
            Ok(row) => row,
            Err(_) => log.query_first("SHOW BINARY LOG STATUS").await?,
        };
        let row = row.ok_or_else(|| BinlogError::Failed("the binary log is off".into()))?;
        let file: Option<String> = row.get(0);
        let pos: Option<u64> = row.get(1);
        match (file, pos) {
            (Some(file), Some(pos)) => Ok(Position { file, pos }),
            _ => Err(BinlogError::Failed("unexpected SHOW MASTER STATUS".into())),
        }
    }

    /// The server's log files and their sizes, oldest first.
    pub async fn files(&mut self) -> Result<Vec<(String, u64)>, BinlogError> {
        let rows: Vec<mysql_async::Row> = self.log().query("SHOW BINARY LOGS").await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
            .collect())
    }

    /// Events between `from` and the end of its file, counted up to `cap`.
    pub async fn events_after(&mut self, from: &Position, cap: u64) -> Result<u64, BinlogError> {
        // The statement takes no placeholders: the file name is quoted as a
        // string literal (names come from the server itself).
        let file = from.file.replace('\\', "\\\\").replace('\'', "\\'");
        let rows: Vec<mysql_async::Row> = self
            .log()
            .query(format!(
                "SHOW BINLOG EVENTS IN '{file}' FROM {} LIMIT {cap}",
                from.pos
            ))
            .await?;
        Ok(rows.len() as u64)
    }

    /// The stored position, with the server id it belongs to.
    pub async fn stored(&mut self) -> Result<Option<(u32, Position)>, BinlogError> {
        let row: Option<(u32, String, u64)> = self
            .conn
            .query_first("SELECT server_id, file, pos FROM binlog_follower_position WHERE id = 1")
            .await?;
        Ok(row.map(|(server, file, pos)| (server, Position { file, pos })))
    }

    /// When no position is stored yet, stores the log's end as the first
    /// one (no lock needed: it never moves a stored one); true when there
    /// was none.
    pub async fn mark_first(&mut self, server_id: u32) -> Result<bool, BinlogError> {
        if self.stored().await?.is_some() {
            return Ok(false);
        }
        let end = self.end().await?;
        self.conn
            .exec_drop(
                "INSERT IGNORE INTO binlog_follower_position (id, server_id, file, pos, updated_at) \
                 VALUES (1, ?, ?, ?, NOW(6))",
                (server_id, &end.file, end.pos),
            )
            .await?;
        Ok(true)
    }

    /// Stores `position` of server `server_id`, if this connection still
    /// holds the lock (a follower that lost it must not move the position
    /// of the one that took over); true when stored.
    pub async fn store(
        &mut self,
        server_id: u32,
        position: &Position,
    ) -> Result<bool, BinlogError> {
        self.conn
            .exec_drop(
                "INSERT INTO binlog_follower_position (id, server_id, file, pos, updated_at) \
                 SELECT 1, ?, ?, ?, NOW(6) FROM DUAL WHERE IS_USED_LOCK(?) = CONNECTION_ID() \
                 ON DUPLICATE KEY UPDATE server_id = VALUES(server_id), file = VALUES(file), \
                 pos = VALUES(pos), updated_at = VALUES(updated_at)",
                (server_id, &position.file, position.pos, &self.lock),
            )
            .await?;
        Ok(self.conn.affected_rows() > 0)
    }
}

/// The lock's name: one follower per database (names are per server and at
/// most 64 characters: a long database name is hashed).
fn lock_name(database: &str) -> String {
    let name = format!("connstatus.follow.{database}");
    if name.len() <= 64 {
        return name;
    }
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let hash = database.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("connstatus.follow.{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_fit_the_servers_limit() {
        assert_eq!(lock_name("connstatus"), "connstatus.follow.connstatus");
        let long = "d".repeat(64);
        assert!(lock_name(&long).len() <= 64);
        assert_ne!(lock_name(&long), lock_name(&"e".repeat(64)));
    }

    #[test]
    fn file_numbers_come_from_the_suffix() {
        let at = |file: &str| Position {
            file: file.into(),
            pos: 4,
        };
        assert_eq!(at("mariadb-bin.000012").file_number(), 12);
        assert_eq!(at("binlog").file_number(), 0);
    }
}
