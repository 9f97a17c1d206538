//! A private Postgres cluster run from the system's own `initdb`/`pg_ctl`, for `hodei dev`
//! and for tests on machines without a database. It listens on 127.0.0.1 only, on a port
//! chosen at creation and remembered in the data directory, and trusts local connections.
//!
//! Postgres refuses to run as root; when we are root the cluster is created and run as the
//! `postgres` system user (or `nobody`), which must be able to reach the data directory.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SUPERUSER: &str = "hodei";
const PORT_FILE: &str = "hodei-port";
const LOG_FILE: &str = "hodei-postgres.log";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPostgresError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb on PATH and in /usr/lib/postgresql/*/bin); \
         install them, e.g. `apt-get install postgresql` on Debian/Ubuntu, or set HODEI_DATABASE_URL"
    )]
    NotInstalled,
    #[error("{action} failed: {detail}")]
    Command { action: String, detail: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedPostgresError {
    let context = context.into();
    move |source| EmbeddedPostgresError::Io { context, source }
}

/// Where the server binaries live.
#[derive(Debug, Clone)]
pub struct PostgresInstallation {
    bin_dir: PathBuf,
}

impl PostgresInstallation {
    /// Finds `initdb` on PATH, else the newest `/usr/lib/postgresql/<version>/bin`.
    pub fn discover() -> Result<Self, EmbeddedPostgresError> {
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                    return Ok(Self { bin_dir: dir });
                }
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin_dir)| Self { bin_dir }).ok_or(EmbeddedPostgresError::NotInstalled)
    }

    fn command(&self, program: &str, run_as: Option<RunAs>) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        if let Some(user) = run_as {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }
}

#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// The unprivileged user to run Postgres as when we are root; `None` when we are not root.
fn unprivileged_user() -> Option<RunAs> {
    let we_are_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if !we_are_root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    ["postgres", "nobody"].iter().find_map(|wanted| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == *wanted)
                .then(|| Some(RunAs { uid: fields[2].parse().ok()?, gid: fields[3].parse().ok()? }))
                .flatten()
        })
    })
}

/// A cluster in `data_dir`, created on first use.
#[derive(Debug, Clone)]
pub struct EmbeddedCluster {
    installation: PostgresInstallation,
    data_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
}

impl EmbeddedCluster {
    /// Opens the cluster in `data_dir`, running `initdb` first if there is none.
    pub fn open_or_init(installation: PostgresInstallation, data_dir: &Path) -> Result<Self, EmbeddedPostgresError> {
        let run_as = unprivileged_user();
        let data_dir = absolute(data_dir)?;
        let port_file = data_dir.join(PORT_FILE);
        if !data_dir.join("PG_VERSION").is_file() {
            std::fs::create_dir_all(&data_dir).map_err(io_error(format!("creating {}", data_dir.display())))?;
            if let Some(user) = run_as {
                std::os::unix::fs::chown(&data_dir, Some(user.uid), Some(user.gid))
                    .map_err(io_error(format!("handing {} to the postgres user", data_dir.display())))?;
            }
            let output = installation
                .command("initdb", run_as)
                .arg("-D")
                .arg(&data_dir)
                .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-sync", "--locale=C"])
                .output()
                .map_err(io_error("running initdb"))?;
            check(output, "initdb")?;
            let port = free_port()?;
            std::fs::write(&port_file, port.to_string()).map_err(io_error("writing the port file"))?;
        }
        let port = std::fs::read_to_string(&port_file)
            .map_err(io_error(format!("reading {}", port_file.display())))?
            .trim()
            .parse()
            .map_err(|_| EmbeddedPostgresError::Command {
                action: "reading the cluster's port".into(),
                detail: format!("{} does not hold a port number", port_file.display()),
            })?;
        Ok(Self { installation, data_dir, port, run_as })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn is_running(&self) -> bool {
        self.installation
            .command("pg_ctl", self.run_as)
            .arg("status")
            .arg("-D")
            .arg(&self.data_dir)
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false)
    }

    /// Starts the server unless it already runs; returns whether this call started it.
    pub fn start(&self) -> Result<bool, EmbeddedPostgresError> {
        if self.is_running() {
            return Ok(false);
        }
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=300 -c shared_buffers=256MB",
            self.port
        );
        let output = self
            .installation
            .command("pg_ctl", self.run_as)
            .arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "120", "-o", &options, "-l"])
            .arg(self.data_dir.join(LOG_FILE))
            .output()
            .map_err(io_error("running pg_ctl start"))?;
        check(output, &format!("starting Postgres (log: {})", self.data_dir.join(LOG_FILE).display()))?;
        Ok(true)
    }

    /// Stops the server, letting it finish cleanly.
    pub fn stop(&self) -> Result<(), EmbeddedPostgresError> {
        let output = self
            .installation
            .command("pg_ctl", self.run_as)
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-m", "fast"])
            .output()
            .map_err(io_error("running pg_ctl stop"))?;
        check(output, "stopping Postgres")
    }

    /// A connection URL for `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }
}

fn absolute(path: &Path) -> Result<PathBuf, EmbeddedPostgresError> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Ok(std::env::current_dir().map_err(io_error("reading the working directory"))?.join(path))
    }
}

fn free_port() -> Result<u16, EmbeddedPostgresError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_error("finding a free port"))?;
    Ok(listener.local_addr().map_err(io_error("finding a free port"))?.port())
}

fn check(output: Output, action: &str) -> Result<(), EmbeddedPostgresError> {
    if output.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    Err(EmbeddedPostgresError::Command { action: action.to_owned(), detail })
}
