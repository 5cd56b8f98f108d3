//! A real `classifier-api serve` process, for what only a process can show: SIGKILL, exit codes.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    /// Every stderr line the process wrote so far, then more as they come.
    pub lines: mpsc::Receiver<String>,
    /// What it logged up to and including the "listening" line.
    pub startup_lines: Vec<String>,
}

/// Starts the binary and waits for it to report the address it bound. `Err` carries stderr
/// when it exits before that.
pub fn start_server(data_dir: &Path, extra: &[&str]) -> Result<ServerProcess, String> {
    start_server_env(data_dir, extra, &[])
}

pub fn start_server_env(
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<ServerProcess, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_classifier-api"))
        .envs(env.iter().copied())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-private-networks",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut startup_lines = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split(|c: char| c.is_whitespace() || c == '"')
                        .next()
                        .unwrap()
                        .to_owned();
                    startup_lines.push(line);
                    return Ok(ServerProcess {
                        child,
                        addr,
                        lines,
                        startup_lines,
                    });
                }
                seen.push(line.clone());
                startup_lines.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                return Err(format!("{status}\n{}", seen.join("\n")));
            }
        }
    }
}

impl ServerProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status and the rest of stderr.
    pub fn sigterm(mut self) -> (std::process::ExitStatus, String) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.lines.try_iter().collect();
        (status, rest.join("\n"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
