//! A Sentinel deployment on free loopback ports: a primary, a replica of it, and three
//! sentinels (`redis-server --sentinel`) watching them under the name `mymaster`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{command_on, free_port, RedisServer};

pub const SERVICE: &str = "mymaster";

/// One `redis-server --sentinel`, killed on drop.
struct Sentinel {
    child: Child,
    port: u16,
}

impl Sentinel {
    fn start(dir: &std::path::Path, primary_port: u16) -> Self {
        let port = free_port();
        let config = dir.join(format!("sentinel-{port}.conf"));
        // Sentinel rewrites its configuration file as the deployment changes.
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 10000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server --sentinel");
        let sentinel = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !command_on(port, &["PING"]).is_some_and(|r| r.starts_with("+PONG")) {
            assert!(Instant::now() < deadline, "sentinel on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        sentinel
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The primary, its replica (which replicates through a [`Relay`]) and three sentinels.
/// Dropped together.
pub struct SentinelDeployment {
    pub primary: RedisServer,
    pub replica: RedisServer,
    /// Between the replica and the primary.
    pub replication: Relay,
    sentinels: Vec<Sentinel>,
    dir: PathBuf,
}

impl SentinelDeployment {
    /// Starts the servers and waits until the replica is in sync and every sentinel knows the
    /// replica and the other sentinels.
    pub fn start() -> Self {
        let primary = RedisServer::start();
        let replication = Relay::start(primary.port());
        let relay_port = replication.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &relay_port]);
        let dir = std::env::temp_dir().join(format!(
            "trc-sentinel-{}-{}",
            std::process::id(),
            primary.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sentinels = (0..3).map(|_| Sentinel::start(&dir, primary.port())).collect();
        let deployment = Self { primary, replica, replication, sentinels, dir };
        deployment.wait_until(Duration::from_secs(20), "the replica in sync and seen", |d| {
            d.replica
                .command(&["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
                && d.sentinels.iter().all(|s| {
                    command_on(s.port, &["SENTINEL", "REPLICAS", SERVICE])
                        .is_some_and(|reply| reply.contains(&d.replica.port().to_string()))
                        && command_on(s.port, &["SENTINEL", "SENTINELS", SERVICE])
                            .is_some_and(|reply| reply.starts_with("*2"))
                })
        });
        deployment
    }

    /// `redis-sentinel://` with every sentinel.
    pub fn url(&self) -> String {
        let mut ports = self.sentinels.iter().map(|s| s.port);
        let first = ports.next().unwrap();
        let nodes: String = ports.map(|p| format!("&node=127.0.0.1:{p}")).collect();
        format!("redis-sentinel://127.0.0.1:{first}/0?sentinelServiceName={SERVICE}{nodes}")
    }

    /// The port the sentinels now name as the primary's.
    pub fn primary_port_by_sentinels(&self) -> Option<u16> {
        let reply =
            command_on(self.sentinels[0].port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])?;
        reply.lines().nth(4)?.trim().parse().ok()
    }

    fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SentinelDeployment {
    fn drop(&mut self) {
        self.sentinels.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP relay on a free loopback port to `target`, that the test can freeze: from then on
/// it passes nothing on in either direction (what it reads is dropped), while keeping both
/// connections open, as a network that stopped delivering would. Between a primary and its
/// replica, a frozen relay loses replication without the primary seeing its replica go.
pub struct Relay {
    pub port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub fn start(target: u16) -> Self {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let pass = |mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>| {
            std::thread::spawn(move || {
                let mut buffer = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = from.read(&mut buffer) {
                    if !frozen.load(Ordering::SeqCst) && to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
        };
        let accepting = Arc::clone(&frozen);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                let (client_in, upstream_in) =
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                pass(client_in, upstream, Arc::clone(&accepting));
                pass(upstream_in, client, Arc::clone(&accepting));
            }
        });
        Self { port, frozen }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
