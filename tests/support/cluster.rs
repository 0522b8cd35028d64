//! A local Redis Cluster of three masters (and, if asked, a replica of each) on free loopback
//! ports, started by the test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::RedisServer;

/// `redis-server --cluster-enabled yes` nodes joined by `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters.
    pub fn start() -> Self {
        Self::start_with(0, 5_000)
    }

    /// Three masters with `replicas` replicas each; a master unreachable for `node_timeout_ms`
    /// is failed over to its replica.
    pub fn start_with(replicas: usize, node_timeout_ms: u32) -> Self {
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                ])
            })
            .collect();
        let addresses: Vec<String> =
            nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create (redis-cli comes with redis-server)");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.is_ok() {
            assert!(Instant::now() < deadline, "the cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// Every live node says the cluster is fine, and every replica is in sync.
    fn is_ok(&self) -> bool {
        self.nodes.iter().filter(|node| node.ping()).all(|node| {
            node.command(&["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok"))
                && node.command(&["INFO", "replication"]).is_some_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
        })
    }

    /// Waits until [`is_ok`](Self::is_ok), up to `timeout`; whether it got there.
    pub fn wait_until_ok(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_ok() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// Kills the first node that is a master now (as a crash would); its index.
    pub fn kill_a_master(&mut self) -> usize {
        let index = self
            .nodes
            .iter()
            .position(|n| n.command(&["ROLE"]).is_some_and(|role| role.contains("master")))
            .expect("a master");
        self.nodes[index].kill();
        index
    }

    /// `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port()));
        let first = nodes.next().unwrap();
        let rest: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
        format!("redis-cluster://{first}?{}", rest.join("&"))
    }

    /// How many keys each node holds.
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| {
                let reply = n.command(&["DBSIZE"]).unwrap_or_default();
                reply.trim().trim_start_matches(':').parse().unwrap_or(0)
            })
            .collect()
    }
}
