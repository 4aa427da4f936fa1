//! A real `redis-server` for tests: on 127.0.0.1 with a free port and a temporary folder,
//! without persistence unless asked, stopped on drop. It can be stopped and started again on
//! the same port and folder, for tests of outages and recovery.
//!
//! The binary comes from `PATH` (Debian's `redis-server`, installed by `testenv/setup.sh`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{self, Process};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) `redis-server`.
pub struct RedisServer {
    // Field order is drop order: the process stops before its folder goes away.
    process: Option<Process>,
    binary: PathBuf,
    port: u16,
    persistent: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk (`--save '' --appendonly no`).
    pub fn start() -> Result<RedisServer> {
        Self::start_with(false)
    }

    /// Starts a server with an append-only file fsynced on every write, so what it
    /// acknowledged survives [`RedisServer::stop`] and [`RedisServer::restart`].
    pub fn start_persistent() -> Result<RedisServer> {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Result<RedisServer> {
        let binary = locate();
        let dir = tempfile::Builder::new()
            .prefix("testenv-redis-")
            .tempdir()
            .context("creating redis-server's temporary folder")?;
        let port = process::free_port()?;
        let mut server = RedisServer {
            process: None,
            binary,
            port,
            persistent,
            dir,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &self.dir.path().display().to_string(),
            "--save",
            "",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.persistent {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        let mut process = Process::start("redis-server", &self.binary, &args, self.dir.path())?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            process.check_running()?;
            if ping(self.port) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on 127.0.0.1:{} does not answer PING after {READY_TIMEOUT:?}; \
                     last lines of {}:\n{}",
                    self.port,
                    process.log_path().display(),
                    process.log_tail(25)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(process);
        Ok(())
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data folder (the append-only file lives here when persistent).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether it is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Stops the server (SIGTERM: a persistent one syncs its file first) and waits for it.
    /// Its port stays reserved for [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Starts the server again on the same port and folder and waits until it answers PING.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }
}

/// Whether a server on `port` answers `PING` with `+PONG` (not `-LOADING`).
fn ping(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_millis(500)))?;
        conn.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"+PONG"))
    };
    attempt().unwrap_or(false)
}

/// `redis-server` from `PATH`; panics with how to install it when missing.
fn locate() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "redis-server is not on PATH; run `make setup` (testenv/setup.sh installs Debian's \
             redis-server package)"
        ),
    }
}
