//! A read-only connection to the MySQL source.
//!
//! - **Where the URL comes from.** `--url`, else `FERRY_SOURCE_URL_<NAME>` (the source's name in
//!   upper case, `-` as `_`), else `FERRY_SOURCE_URL`. In the deployment the reconcile function
//!   reads it from AWS Secrets Manager ([`SourceUrl::from_rds_secret`], the JSON RDS writes for a
//!   managed secret). A URL is never printed with its password: [`SourceUrl`]'s `Display` masks it.
//! - **Read-only.** Every session runs `SET SESSION TRANSACTION READ ONLY`, so even a user granted
//!   more than `SELECT` cannot write through ferry. Grant `SELECT` on the mapped schemas (and
//!   `REPLICATION CLIENT`, MariaDB `BINLOG MONITOR`, for the binlog checks) and point ferry at a
//!   read replica: reconcile reads whole tables.
//! - **Times in UTC.** The session's `time_zone` is `+00:00`, so TIMESTAMP columns read as DMS
//!   writes them.
//! - **Timeouts.** Connecting and every statement have a client-side deadline
//!   ([`ConnectOptions`]); the server is also told (`max_statement_time` on MariaDB,
//!   `max_execution_time` on MySQL), so an abandoned statement does not keep running.
//! - **TLS.** `?require_ssl=true` in the URL (mysql_async's URL options) turns TLS on, with the
//!   server's certificate verified against the built-in Mozilla roots (`verify_ca` and
//!   `verify_identity` can be relaxed in the URL for a private CA).

use std::fmt;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Row, Value};

/// Errors reading the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No URL was given or found in the environment.
    #[error(
        "no source URL for {source_name:?}: pass --url, or set FERRY_SOURCE_URL_{env} or FERRY_SOURCE_URL (mysql://user:password@host:3306/)"
    )]
    NoUrl {
        /// The source's name.
        source_name: String,
        /// Its environment variable suffix.
        env: String,
    },
    /// The URL does not parse.
    #[error("source URL {url} is not a MySQL URL: {reason}")]
    BadUrl {
        /// The URL, password masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// Connecting failed or timed out.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// A statement failed or timed out.
    #[error("statement failed on {url}: {reason} (statement: {sql})")]
    Query {
        /// The URL, password masked.
        url: String,
        /// The statement, abbreviated.
        sql: String,
        /// Why.
        reason: String,
    },
}

/// A MySQL URL, `mysql://user:password@host:port/[database][?options]`.
#[derive(Clone)]
pub struct SourceUrl(String);

impl SourceUrl {
    /// Wraps a URL after checking that it parses.
    pub fn parse(url: &str) -> Result<SourceUrl, SourceError> {
        let u = SourceUrl(url.to_owned());
        Opts::from_url(url).map_err(|e| SourceError::BadUrl {
            url: u.to_string(),
            reason: e.to_string(),
        })?;
        Ok(u)
    }

    /// The URL for source `name`: `explicit`, else the environment.
    pub fn resolve(name: &str, explicit: Option<&str>) -> Result<SourceUrl, SourceError> {
        if let Some(u) = explicit {
            return SourceUrl::parse(u);
        }
        let env = env_suffix(name);
        let found = std::env::var(format!("FERRY_SOURCE_URL_{env}"))
            .or_else(|_| std::env::var("FERRY_SOURCE_URL"))
            .ok()
            .filter(|u| !u.is_empty());
        match found {
            Some(u) => SourceUrl::parse(&u),
            None => Err(SourceError::NoUrl {
                source_name: name.to_owned(),
                env,
            }),
        }
    }

    /// The URL in an RDS-managed secret (`{"username", "password", "host", "port"}`).
    pub fn from_rds_secret(secret: &str) -> Result<SourceUrl, SourceError> {
        let bad = |reason: &str| SourceError::BadUrl {
            url: "(secret)".into(),
            reason: reason.into(),
        };
        let v: serde_json::Value =
            serde_json::from_str(secret).map_err(|_| bad("the secret is not JSON"))?;
        let field = |k: &str| {
            v.get(k)
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
        };
        let (Some(user), Some(password), Some(host)) =
            (field("username"), field("password"), field("host"))
        else {
            return Err(bad("the secret lacks username, password or host"));
        };
        let port = field("port").unwrap_or_else(|| "3306".into());
        SourceUrl::parse(&format!(
            "mysql://{}:{}@{host}:{port}/?require_ssl=true",
            percent(&user),
            percent(&password)
        ))
    }

    /// The URL as given, password included: only for the driver, never for output.
    fn expose(&self) -> &str {
        &self.0
    }
}

/// `FERRY_SOURCE_URL_<this>` for a source name.
pub fn env_suffix(name: &str) -> String {
    name.to_ascii_uppercase().replace(['-', '.'], "_")
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl fmt::Display for SourceUrl {
    /// The URL with its password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.0;
        let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
            return f.write_str("(unparsable URL)");
        };
        let rest = &s[scheme_end..];
        let host_start = rest.find('/').unwrap_or(rest.len());
        match rest[..host_start].rfind('@') {
            Some(at) => {
                let user = rest[..at].split(':').next().unwrap_or_default();
                write!(f, "{}{user}:***{}", &s[..scheme_end], &rest[at..])
            }
            None => f.write_str(s),
        }
    }
}

impl fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceUrl({self})")
    }
}

/// Deadlines.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Connecting.
    pub connect_timeout: Duration,
    /// Each statement.
    pub statement_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(300),
        }
    }
}

/// One read-only session, driven from synchronous code (its own single-threaded runtime).
pub struct MySql {
    rt: tokio::runtime::Runtime,
    conn: Option<mysql_async::Conn>,
    url: SourceUrl,
    options: ConnectOptions,
    /// `SELECT VERSION()`.
    pub version: String,
}

/// A row of text values (`None`: SQL NULL); numbers and times arrive as the server prints them.
pub type TextRow = Vec<Option<String>>;

impl MySql {
    /// Connects and prepares the session (read-only, UTC, server-side statement limit).
    pub fn connect(url: &SourceUrl, options: ConnectOptions) -> Result<MySql, SourceError> {
        let fail = |reason: String| SourceError::Connect {
            url: url.to_string(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let opts = Opts::from_url(url.expose()).map_err(|e| fail(e.to_string()))?;
        let conn = rt
            .block_on(async {
                tokio::time::timeout(options.connect_timeout, mysql_async::Conn::new(opts)).await
            })
            .map_err(|_| fail(format!("no answer in {:?}", options.connect_timeout)))?
            .map_err(|e| fail(e.to_string()))?;
        let mut db = MySql {
            rt,
            conn: Some(conn),
            url: url.clone(),
            options,
            version: String::new(),
        };
        db.version = db.scalar("SELECT VERSION()")?.unwrap_or_default();
        let secs = options.statement_timeout.as_secs().max(1);
        let limit = if db.is_mariadb() {
            format!("SET SESSION max_statement_time = {secs}")
        } else {
            format!("SET SESSION max_execution_time = {}", secs * 1000)
        };
        for sql in [
            "SET SESSION TRANSACTION READ ONLY",
            "SET SESSION time_zone = '+00:00'",
            "SET SESSION group_concat_max_len = 1048576",
            limit.as_str(),
        ] {
            db.exec(sql)?;
        }
        Ok(db)
    }

    /// Whether the server is MariaDB (its functions and variables differ from MySQL's).
    pub fn is_mariadb(&self) -> bool {
        self.version.to_ascii_lowercase().contains("mariadb")
    }

    /// The URL, password masked.
    pub fn url(&self) -> String {
        self.url.to_string()
    }

    fn query_err(&self, sql: &str, reason: String) -> SourceError {
        let mut sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        if sql.len() > 300 {
            let mut end = 300;
            while !sql.is_char_boundary(end) {
                end -= 1;
            }
            sql.truncate(end);
            sql.push('…');
        }
        SourceError::Query {
            url: self.url(),
            sql,
            reason,
        }
    }

    /// Runs a statement that returns rows; values as text.
    pub fn query(&mut self, sql: &str) -> Result<Vec<TextRow>, SourceError> {
        let timeout = self.options.statement_timeout;
        let Some(mut conn) = self.conn.take() else {
            return Err(self.query_err(sql, "the connection was lost after a timeout".into()));
        };
        let result = self.rt.block_on(async {
            let r = tokio::time::timeout(timeout, conn.query::<Row, _>(sql)).await;
            (r, conn)
        });
        match result {
            (Ok(Ok(rows)), conn) => {
                self.conn = Some(conn);
                Ok(rows.into_iter().map(text_row).collect())
            }
            (Ok(Err(e)), conn) => {
                self.conn = Some(conn);
                Err(self.query_err(sql, e.to_string()))
            }
            // The connection is mid-statement: dropped, never reused.
            (Err(_), _) => Err(self.query_err(sql, format!("no answer in {timeout:?}"))),
        }
    }

    /// Runs a statement that returns nothing.
    pub fn exec(&mut self, sql: &str) -> Result<(), SourceError> {
        self.query(sql).map(drop)
    }

    /// The first column of the first row.
    pub fn scalar(&mut self, sql: &str) -> Result<Option<String>, SourceError> {
        Ok(self
            .query(sql)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }
}

impl Drop for MySql {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), conn.disconnect()).await
            });
        }
    }
}

fn text_row(row: Row) -> TextRow {
    row.unwrap()
        .into_iter()
        .map(|v| match v {
            Value::NULL => None,
            Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Value::Int(i) => Some(i.to_string()),
            Value::UInt(u) => Some(u.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Double(d) => Some(d.to_string()),
            other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
        })
        .collect()
}

/// A single-quoted MySQL string literal (backslashes and quotes escaped, so it holds under any
/// `sql_mode`).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A backquoted MySQL identifier.
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_prints() {
        let u = SourceUrl::parse("mysql://ferry_ro:s3cr%40t@db.internal:3306/slots").unwrap();
        assert_eq!(u.to_string(), "mysql://ferry_ro:***@db.internal:3306/slots");
        assert!(!format!("{u:?}").contains("s3cr"));
        let e = SourceUrl::parse("postgres://a:hunter2@h/").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_managed_secret_becomes_a_tls_url() {
        let u = SourceUrl::from_rds_secret(
            r#"{"username":"ferry_ro","password":"p@ss:/w","host":"replica.example","port":3306}"#,
        )
        .unwrap();
        assert_eq!(
            u.to_string(),
            "mysql://ferry_ro:***@replica.example:3306/?require_ssl=true"
        );
        assert!(u.expose().contains("p%40ss%3A%2Fw"));
        assert!(SourceUrl::from_rds_secret(r#"{"username":"x"}"#).is_err());
    }

    #[test]
    fn literals_escape() {
        assert_eq!(literal(r"it's a \ test"), r"'it''s a \\ test'");
        assert_eq!(ident("we`ird"), "`we``ird`");
        assert_eq!(env_suffix("slots-game"), "SLOTS_GAME");
    }
}
