//! Tests' Redis: a real `redis-server` (Debian's package, installed by `scripts/test.sh`) on a
//! free port, nothing saved to disk. It is stopped on drop, and a shell beside it stops it when
//! the test process dies, so no server outlives a test run.
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    /// Stops the server if this process dies without dropping it (a static, a panic, a kill).
    watchdog: Child,
    pub port: u16,
}

impl RedisServer {
    /// On a free port. A port found free can be taken by a server another test starts at the
    /// same moment; ours then exits and the other answers on it, so the server is asked who it
    /// is and the start retried on another port.
    pub fn start() -> RedisServer {
        for _ in 0..10 {
            if let Some(server) = Self::try_spawn(free_port(), &[]) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    /// On a given port: "Redis comes back" where the clients already point.
    pub fn start_on(port: u16) -> RedisServer {
        Self::spawn(port, &[])
    }

    fn spawn(port: u16, extra: &[&str]) -> RedisServer {
        Self::try_spawn(port, extra)
            .unwrap_or_else(|| panic!("redis-server could not listen on {port}: port taken"))
    }

    /// `None` if another process answers on `port` instead of ours.
    fn try_spawn(port: u16, extra: &[&str]) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        let watchdog = Command::new("sh")
            .args([
                "-c",
                r#"while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 0.2; done
                   kill "$2" 2>/dev/null"#,
                "sh",
            ])
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("sh runs");
        let mut server = RedisServer {
            child,
            watchdog,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match server.answering_pid() {
                Some(pid) if pid == server.child.id() => return Some(server),
                Some(_) => return None,
                None if matches!(server.child.try_wait(), Ok(Some(_))) => return None,
                None => {}
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `process_id` of whatever Redis answers on our port, if one does.
    fn answering_pid(&self) -> Option<u32> {
        let mut conn = self.client().get_connection().ok()?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
        let line = info.lines().find(|l| l.starts_with("process_id:"))?;
        line["process_id:".len()..].trim().parse().ok()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid URL")
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as when a
    /// server hangs or the network drops packets; unlike a restart, the data is still there
    /// after [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// A connection as the service makes it (5 s per command: tests are not about timeouts).
    #[cfg(test)]
    pub(crate) fn conn(&self) -> crate::redis_conn::RedisConn {
        crate::redis_conn::RedisConn::single(self.client(), Duration::from_secs(5))
            .expect("a valid URL")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        for child in [&mut self.child, &mut self.watchdog] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One server for the whole test binary; each test keeps to its own key prefix.
pub fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// A prefix no other test in this process uses.
pub fn unique_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("test{}-{n}", std::process::id())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A free port whose cluster bus port (port + 10000, which must be a valid port) is free too:
/// a node on a port above 55535 cannot start.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster of three masters (no replicas), made with `redis-cli --cluster create`, its
/// node files in a temp dir. Stopped on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let port = free_cluster_port();
                let conf = dir.path().join(format!("nodes-{i}.conf"));
                let args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().expect("a UTF-8 temp path"),
                    "--dir",
                    dir.path().to_str().expect("a UTF-8 temp path"),
                ];
                RedisServer::spawn(port, &args)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        let ok = |port: u16| {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        };
        while !nodes.iter().all(|n| ok(n.port)) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes, _dir: dir }
    }

    /// The seed nodes, as `--redis-url` takes them with `--redis-cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
