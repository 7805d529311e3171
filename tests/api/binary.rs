//! The real `arbor` binary as a child process, configured only by a config file: for tests of
//! what only a process shows (SIGKILL, SIGTERM, exit codes, log lines, CLI subcommands).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arbor::config::Settings;
use reqwest::StatusCode;

/// A running `arbor` serving `settings` until stopped; killed if dropped.
pub struct Server {
    child: Child,
    pub base: String,
    /// Where stdout goes when captured (`start_logged`).
    pub log: Option<PathBuf>,
}

/// Writes `settings` as the config file the binary reads.
pub fn write_config(settings: &Settings, dir: &Path) -> PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(&config, toml::to_string(settings).unwrap()).unwrap();
    config
}

/// `arbor --config <file>` with no `ARBOR_*` variables from the test's environment.
pub fn command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arbor"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ARBOR_")) {
        command.env_remove(key);
    }
    command.arg("--config").arg(config);
    command
}

impl Server {
    /// Starts the server and waits until `/ready` answers 200. Logs go to stderr (warn).
    pub async fn start(settings: &Settings, dir: &Path) -> Self {
        Self::spawn(settings, dir, None).await
    }

    /// Like `start`, with stdout (the log, at info) captured in `<dir>/arbor.log`.
    pub async fn start_logged(settings: &Settings, dir: &Path) -> Self {
        Self::spawn(settings, dir, Some(dir.join("arbor.log"))).await
    }

    async fn spawn(settings: &Settings, dir: &Path, log: Option<PathBuf>) -> Self {
        let config = write_config(settings, dir);
        let mut command = command(&config);
        match &log {
            Some(path) => {
                let file = std::fs::File::create(path).unwrap();
                command.env("RUST_LOG", "info").stdout(Stdio::from(file));
            }
            None => {
                command.env("RUST_LOG", "warn").stdout(Stdio::null());
            }
        }
        let child = command.stderr(Stdio::inherit()).spawn().unwrap();
        let base = format!("http://127.0.0.1:{}", settings.server.port);
        let client = crate::helpers::test_client();
        let started = Instant::now();
        loop {
            if let Ok(res) = client.get(format!("{base}/ready")).send().await {
                if res.status() == StatusCode::OK {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "arbor did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, base, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM (by this child's PID).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "arbor did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The captured log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.as_ref().expect("started with start_logged")).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
