//! A `redis-server` of the test's own (from PATH), on a unix socket in a fresh directory or on
//! a free loopback port, with no persistence: tests never share Redis state, and never touch a
//! Redis that runs on this machine already. It can be killed, restarted empty, paused and
//! resumed, as the shared tier's failure tests need.
//!
//! Without `redis-server` on PATH a test is skipped with a note, unless `CI` is set: then it
//! fails (`.ci/run` installs the package).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the server listens.
#[derive(Debug, Clone)]
enum Listen {
    Socket(PathBuf),
    Port(u16),
}

pub struct RedisServer {
    dir: PathBuf,
    listen: Listen,
    password: Option<String>,
    child: Option<Child>,
}

/// Whether tests that need Redis can run; `false` means skip (and say so).
fn available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not on PATH, and CI is set: install the Debian package redis-server"
        );
        eprintln!("skipped: redis-server is not on PATH (apt-get install redis-server)");
    }
    found
}

fn fresh_dir() -> PathBuf {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "usage-gateway-redis-{}-{n}-{:08x}",
        std::process::id(),
        getrandom::u32().unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

impl RedisServer {
    /// A server on a unix socket; `None`: skip the test (no redis-server, not in CI).
    pub fn start() -> Option<RedisServer> {
        if !available() {
            return None;
        }
        let dir = fresh_dir();
        let socket = dir.join("redis.sock");
        Some(Self::launch(dir, Listen::Socket(socket), None))
    }

    /// A server on a free loopback port that requires `password`.
    pub fn start_tcp_with_password(password: &str) -> Option<RedisServer> {
        if !available() {
            return None;
        }
        Some(Self::launch(
            fresh_dir(),
            Listen::Port(free_port()),
            Some(password.to_owned()),
        ))
    }

    fn launch(dir: PathBuf, listen: Listen, password: Option<String>) -> RedisServer {
        let mut server = RedisServer {
            dir,
            listen,
            password,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command.args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        command.arg("--dir").arg(&self.dir);
        match &self.listen {
            Listen::Socket(path) => {
                let _ = std::fs::remove_file(path);
                command.args(["--port", "0", "--unixsocketperm", "700"]);
                command.arg("--unixsocket").arg(path);
            }
            Listen::Port(port) => {
                command.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
            }
        }
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.wait_until_answering();
    }

    /// The URL the gateway is given.
    pub fn url(&self) -> String {
        match (&self.listen, &self.password) {
            (Listen::Socket(path), None) => format!("unix://{}", path.display()),
            (Listen::Socket(path), Some(password)) => {
                format!("unix://{}?pass={password}", path.display())
            }
            (Listen::Port(port), None) => format!("redis://127.0.0.1:{port}"),
            (Listen::Port(port), Some(password)) => {
                format!("redis://:{password}@127.0.0.1:{port}")
            }
        }
    }

    /// A plain connection, for tests that look at what the gateway stored.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .expect("a connection to the test's redis-server")
    }

    fn wait_until_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered = redis::Client::open(self.url())
                .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
            if answered.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (SIGKILL): connections break, nothing is saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, at the same address.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused server ignores nothing but SIGKILL; continue it anyway for a clean end.
            let _ = Command::new("kill")
                .args([
                    "-CONT",
                    &self.child.as_ref().map_or(0, Child::id).to_string(),
                ])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
