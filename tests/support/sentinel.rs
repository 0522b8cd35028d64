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

/// The primary, its replica and three sentinels. Dropped together.
pub struct SentinelDeployment {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<Sentinel>,
    dir: PathBuf,
}

impl SentinelDeployment {
    /// Starts the servers and waits until the replica is in sync and every sentinel knows the
    /// replica and the other sentinels.
    pub fn start() -> Self {
        let primary = RedisServer::start();
        let primary_port = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary_port]);
        let dir = std::env::temp_dir().join(format!(
            "trc-sentinel-{}-{}",
            std::process::id(),
            primary.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sentinels = (0..3).map(|_| Sentinel::start(&dir, primary.port())).collect();
        let deployment = Self { primary, replica, sentinels, dir };
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
