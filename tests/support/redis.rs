//! Starts a private `redis-server` on a free loopback port, never the shared one on 6379.
//!
//! A missing `redis-server` is a hard failure, never a skip: the storage tests are the point.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` this test owns. Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--maxmemory", "1mb"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..10 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("trc-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create a directory for redis-server");
            let mut server = Self { child: None, port, dir };
            if server.spawn(extra) {
                return server;
            }
        }
        panic!("could not start redis-server on a free port after 10 attempts");
    }

    fn spawn(&mut self, extra: &[&str]) -> bool {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--dir"])
            .arg(&self.dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): the storage tests need it on PATH \
                     (Debian/Ubuntu: apt-get install -y redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // The server answering must be ours: another test may have taken the port first.
            if self.ping() {
                return self.is_ours() || {
                    self.kill();
                    false
                };
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None; // exited: the port was probably taken
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and nothing is answered, the way
    /// a stalled or overloaded server behaves. Its data is kept.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server is running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn(&[]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    /// Whether the server answers `PING`.
    pub fn ping(&self) -> bool {
        self.command(&["PING"]).is_some_and(|reply| reply.starts_with("+PONG"))
    }

    /// Whether the server on our port is the process we started (`INFO server` names its pid).
    fn is_ours(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(Child::id) else { return false };
        self.command(&["INFO", "server"])
            .is_some_and(|info| info.contains(&format!("process_id:{pid}\r\n")))
    }

    /// Sends one command with a fresh connection and returns the raw RESP reply.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        command_on(self.port, args)
    }

    /// Every key in the server (`KEYS *`), raw RESP.
    pub fn keys(&self) -> String {
        self.command(&["KEYS", "*"]).unwrap_or_default()
    }
}

/// Sends one command to the server on `port` with a fresh connection and returns the raw RESP
/// reply (`None` if none came within 2 s).
pub fn command_on(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = vec![0; 64 * 1024];
    let n = stream.read(&mut reply).ok()?;
    Some(String::from_utf8_lossy(&reply[..n]).into_owned())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}
