//! The stand-ins the tests start: bqemulator (BigQuery SQL) and moto (S3, SQS), from the
//! virtualenv `scripts/test` installs (`$FERRY_VENV`, default `~/.cache/ferry/venv`).
//!
//! Each is started once per test binary, on a free port on 127.0.0.1, and stopped when the test
//! binary exits (a small shell watchdog ends it when the test process is gone).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The virtualenv with the stand-ins.
pub fn venv() -> PathBuf {
    std::env::var_os("FERRY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ferry/venv")
        })
}

fn tool(name: &str) -> PathBuf {
    let p = venv().join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which installs the test stand-ins (tests/requirements.txt)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `program args` under a watchdog that stops it when this process ends.
fn spawn_watched(program: &std::path::Path, args: &[String], env: &[(&str, String)], log: &str) {
    let cmd = std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        "{cmd} >'{log}' 2>&1 & child=$!; while kill -0 {me} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.3; done; kill $child 2>/dev/null",
        me = std::process::id()
    );
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    std::thread::spawn(move || child.wait());
}

fn wait_http(url: &str, what: &str, log: &str, timeout: Duration) {
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    while started.elapsed() < timeout {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not start within {timeout:?}; its log ({log}):\n{tail}");
}

/// bqemulator's REST base URL (`http://127.0.0.1:port`), started on first use.
pub fn bqemulator() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let program = tool("bqemulator");
        // It loads DuckDB's spatial extension from $HOME; offline, the copy shipped in the
        // duckdb-extension-spatial wheel is put where DuckDB looks.
        let home = std::env::temp_dir().join(format!("ferry-bqemulator-{}", std::process::id()));
        let ext_dir = home.join(".duckdb/extensions/v1.5.5/linux_amd64");
        std::fs::create_dir_all(&ext_dir).unwrap();
        let site = venv().join("lib");
        let ext = walk(&site, "spatial.duckdb_extension").expect(
            "spatial.duckdb_extension not found in the virtualenv (duckdb-extension-spatial)",
        );
        std::fs::copy(&ext, ext_dir.join("spatial.duckdb_extension")).unwrap();
        let (rest, grpc) = (free_port(), free_port());
        let log = std::env::temp_dir()
            .join(format!("ferry-bqemulator-{}.log", std::process::id()))
            .display()
            .to_string();
        let args: Vec<String> = [
            "start",
            "--rest-host",
            "127.0.0.1",
            "--rest-port",
            &rest.to_string(),
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            &grpc.to_string(),
            "--project",
            "ferry-test",
            "--log-level",
            "warning",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        spawn_watched(
            &program,
            &args,
            &[("HOME", home.display().to_string())],
            &log,
        );
        let url = format!("http://127.0.0.1:{rest}");
        wait_http(&url, "bqemulator", &log, Duration::from_secs(90));
        url
    })
}

/// moto server's base URL (S3 and SQS), started on first use.
pub fn moto() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let program = tool("moto_server");
        let port = free_port();
        let log = std::env::temp_dir()
            .join(format!("ferry-moto-{}.log", std::process::id()))
            .display()
            .to_string();
        let args = vec![
            "-H".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
        ];
        spawn_watched(&program, &args, &[], &log);
        let url = format!("http://127.0.0.1:{port}");
        wait_http(&url, "moto server", &log, Duration::from_secs(60));
        url
    })
}

/// The AWS SDK's configuration for moto (started if needed): its endpoint, a region, static
/// test credentials.
pub async fn moto_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

/// S3 (path-style) and SQS clients of the real AWS SDK pointed at moto (started if needed).
pub async fn moto_clients() -> (aws_sdk_s3::Client, aws_sdk_sqs::Client) {
    let config = moto_config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    (s3, aws_sdk_sqs::Client::new(&config))
}

/// A DynamoDB client on moto with an apply-lock table `table` (key `name`, as deployed), created
/// if missing.
pub async fn moto_lock_table(table: &str) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let config = moto_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("name")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("name")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await;
    if let Err(e) = created {
        let exists = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_in_use_exception());
        assert!(exists, "create table {table}: {e:?}");
    }
    client
}

fn walk(dir: &std::path::Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = walk(&p, name) {
                return Some(found);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// A private MariaDB server (Debian `mariadb-server`, which `scripts/test` installs): its own
/// data directory and port, row-based binary logging as DMS needs, stopped when the test binary
/// exits.
pub struct MariaDb {
    /// Root URL (no password; the server listens on 127.0.0.1 only).
    pub root_url: String,
    /// The port.
    pub port: u16,
    /// The data directory.
    pub datadir: PathBuf,
}

impl MariaDb {
    /// A read-only user's URL (`SELECT` and `BINLOG MONITOR`, as the README asks of operators).
    pub fn read_only_url(&self) -> String {
        format!("mysql://ferry_ro:ferry-ro-pw@127.0.0.1:{}/", self.port)
    }

    /// Starts a new server; `extra` are more `mariadbd` options (for example
    /// `--binlog-row-image=MINIMAL`).
    pub fn start(label: &str, extra: &[&str]) -> MariaDb {
        let bin = |name: &str| {
            ["/usr/sbin", "/usr/bin"]
                .iter()
                .map(|d| PathBuf::from(d).join(name))
                .find(|p| p.exists())
                .unwrap_or_else(|| {
                    panic!("{name} is missing: run scripts/test, which installs mariadb-server")
                })
        };
        let base =
            std::env::temp_dir().join(format!("ferry-mariadb-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let datadir = base.join("data");
        let install = Command::new(bin("mariadb-install-db"))
            .args([
                "--no-defaults",
                "--user=root",
                &format!("--datadir={}", datadir.display()),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .unwrap();
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        let port = free_port();
        let log = base.join("server.log").display().to_string();
        let mut args: Vec<String> = vec![
            "--no-defaults".into(),
            "--user=root".into(),
            format!("--datadir={}", datadir.display()),
            format!("--socket={}", base.join("sock").display()),
            format!("--pid-file={}", base.join("pid").display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--server-id=1".into(),
            format!("--log-bin={}", base.join("binlog").display()),
            "--binlog-format=ROW".into(),
            "--binlog-row-image=FULL".into(),
            "--skip-name-resolve".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        spawn_watched(&bin("mariadbd"), &args, &[], &log);
        wait_http(
            &format!("http://127.0.0.1:{port}"),
            "MariaDB",
            &log,
            Duration::from_secs(60),
        );
        let db = MariaDb {
            root_url: format!("mysql://root@127.0.0.1:{port}/"),
            port,
            datadir,
        };
        let mut root = db.admin();
        for sql in [
            "CREATE USER 'ferry_ro'@'%' IDENTIFIED BY 'ferry-ro-pw'",
            "GRANT SELECT, BINLOG MONITOR ON *.* TO 'ferry_ro'@'%'",
        ] {
            root.exec(sql).unwrap();
        }
        db
    }

    /// A root session that can write.
    pub fn admin(&self) -> Admin {
        Admin {
            port: self.port.to_string(),
        }
    }
}

/// A writing session on a test server (the `mariadb` client, so the tests do not write through
/// ferry's read-only connection).
pub struct Admin {
    port: String,
}

impl Admin {
    /// Runs statements (`;`-separated) as root, with zero dates allowed.
    pub fn exec(&mut self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "-uroot",
                "-h127.0.0.1",
                &format!("-P{}", self.port),
                "--batch",
                "--skip-column-names",
                "--default-character-set=utf8mb4",
                "--init-command=SET SESSION sql_mode = '', time_zone = '+00:00'",
                "-e",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}
