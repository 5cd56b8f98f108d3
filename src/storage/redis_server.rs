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
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(port)
    }

    /// On a given port: "Redis comes back" where the clients already point.
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
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
        let server = RedisServer {
            child,
            watchdog,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid URL")
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
