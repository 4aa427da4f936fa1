//! Child processes of the control plane: started with their output in a log file, stopped by
//! PID on drop, and reaped by a watchdog if the test process dies without dropping them
//! (a panic in a static, `kill -9`): the watchdog waits on a pipe that closes when we exit.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running component. Dropping it kills the process and waits for it.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    // Its stdin pipe stays open while we live; when it closes the watchdog kills the process.
    watchdog: Option<Child>,
}

impl Process {
    /// Starts `program` with `args`, output to `<log_dir>/<name>.log`.
    pub fn start(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Result<Process> {
        Self::start_with_env(name, program, args, &[], log_dir)
    }

    /// Like [`Process::start`], with extra environment variables.
    pub fn start_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Result<Process> {
        if !program.exists() {
            bail!(
                "{name}: binary {} does not exist; run testenv/setup.sh",
                program.display()
            );
        }
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("{name}: cannot run {}", program.display()))?;
        let pid = child.id().to_string();
        let watchdog = Command::new("sh")
            .args([
                "-c",
                "read _ignored; kill -9 \"$1\" 2>/dev/null",
                "watchdog",
                &pid,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Ok(Process {
            name: name.to_string(),
            child,
            log,
            watchdog,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails with the end of the log if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(25)
            );
        }
        Ok(())
    }

    /// The last `n` lines of the process's output.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends SIGTERM and waits up to `grace` for the exit, then kills.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The watchdog goes first, so it never signals a PID that was reaped and reused.
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes `dir` when this test process ends, however it ends: a shell waits on a pipe that
/// closes when we exit (the folders of the shared control and data planes live in statics,
/// which are never dropped, and each holds etcd's data and logs: ~130 MB per test binary).
/// `TESTENV_KEEP=1` keeps them for debugging. Keep the returned child for as long as `dir` is
/// needed.
pub fn remove_on_exit(dir: &Path) -> Option<Child> {
    if std::env::var_os("TESTENV_KEEP").is_some() {
        return None;
    }
    // A few attempts: processes killed at the same moment may still be writing into it.
    Command::new("sh")
        .args([
            "-c",
            "read _ignored; for i in 1 2 3 4 5; do rm -rf \"$1\" 2>/dev/null; [ -e \"$1\" ] || exit 0; sleep 1; done",
            "cleanup",
        ])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// A free TCP port on 127.0.0.1 (bound then released; the caller binds it next). Never the
/// same port twice in one process: the kernel may hand a just-released port out again, and
/// callers that pick several ports before binding any (MLServer's HTTP, gRPC and metrics
/// ports) must get distinct ones.
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let port = listener.local_addr()?.port();
        if GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
    bail!("no free port found that was not already handed out")
}

/// Fails with a clear message if `port` is already taken on 127.0.0.1.
pub fn ensure_free(port: u16, what: &str) -> Result<()> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .with_context(|| format!("port 127.0.0.1:{port} for {what} is already in use"))
}
