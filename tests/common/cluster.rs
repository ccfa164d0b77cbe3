//! RabbitMQ nodes of the tests' own: a cluster of several nodes on this one
//! machine (distinct node names, AMQP and distribution ports, data
//! directories), started with Debian's `rabbitmq-server -detached` and
//! joined with `rabbitmqctl join_cluster`, as an operator would.
//!
//! Debian's wrappers run RabbitMQ as the `rabbitmq` user (`su` keeps the
//! `RABBITMQ_*` environment), so this needs root, as CI has; elsewhere
//! [`RabbitCluster::start`] returns why it cannot, for the test to print and
//! skip.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// One node of a [`RabbitCluster`].
pub struct RabbitNode {
    /// `warren-<pid>-<n>@localhost`.
    pub name: String,
    /// Its AMQP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

/// Nodes clustered together, stopped and removed on drop.
pub struct RabbitCluster {
    /// The nodes, the first being the one the others joined.
    pub nodes: Vec<RabbitNode>,
}

/// A port free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `id -u NAME` / `id -g NAME`.
fn id_of(flag: &str, user: &str) -> Result<u32, String> {
    let out = run(Command::new("id").args([flag, user]))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("id {flag} {user}: {e}"))
}

impl RabbitNode {
    /// `rabbitmqctl -n NODE args…`.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = run(Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the node runs RabbitMQ (retrying while it is not yet
    /// registered with epmd, when `await_startup` fails at once).
    pub fn await_startup(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match self.ctl(&["await_startup", "--timeout", "120"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Stops RabbitMQ on the node (its Erlang VM stays), as a node failure
    /// looks to clients: their connections close, its port refuses.
    pub fn stop_app(&self) {
        if let Err(e) = self.ctl(&["stop_app"]) {
            panic!("stop_app on {}: {e}", self.name);
        }
    }

    /// Starts RabbitMQ on the node again and waits until it runs.
    pub fn start_app(&self) {
        if let Err(e) = self.ctl(&["start_app"]).and_then(|_| self.await_startup()) {
            panic!("start_app on {}: {e}", self.name);
        }
    }
}

impl RabbitCluster {
    /// Starts `size` nodes and clusters them; `Err` says why RabbitMQ
    /// cannot run here.
    pub fn start(size: usize) -> Result<Self, String> {
        let root = run(Command::new("id").arg("-u"))
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        if !root {
            return Err("starting RabbitMQ nodes takes root (Debian's wrapper runs them as the rabbitmq user)".into());
        }
        super::ensure_rabbitmq();
        let uid = id_of("-u", "rabbitmq")?;
        let gid = id_of("-g", "rabbitmq")?;
        let mut cluster = RabbitCluster { nodes: Vec::new() };
        for n in 1..=size {
            let name = format!("warren-{}-{n}@localhost", std::process::id());
            let dir =
                std::env::temp_dir().join(format!("warren-rabbit-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let plugins = dir.join("enabled_plugins");
            std::fs::write(&plugins, "[].\n").map_err(|e| e.to_string())?;
            for path in [&dir, &plugins] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
            let node = RabbitNode {
                name,
                port: free_port(),
                dir,
            };
            run(Command::new("rabbitmq-server")
                .arg("-detached")
                .env("RABBITMQ_NODENAME", &node.name)
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", node.port.to_string())
                .env("RABBITMQ_DIST_PORT", free_port().to_string())
                .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
                .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
                .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq")))?;
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            node.await_startup()?;
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"])?;
            node.ctl(&["join_cluster", &first])?;
            node.ctl(&["start_app"])?;
            node.await_startup()?;
        }
        Ok(cluster)
    }

    /// An oslo-style `rabbit://` URL over the nodes in `order` (fail-over
    /// order), with quorum queues.
    pub fn url(&self, order: &[usize]) -> String {
        let hosts: Vec<String> = order
            .iter()
            .map(|&i| format!("guest:guest@127.0.0.1:{}", self.nodes[i].port))
            .collect();
        format!("rabbit://{}/?rabbit_quorum_queue=true", hosts.join(","))
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if node.ctl(&["stop"]).is_err() {
                // The VM did not answer: kill it by its pid file.
                if let Ok(pid) = std::fs::read_to_string(node.dir.join("pid")) {
                    let _ = Command::new("sh")
                        .args(["-c", &format!("kill -9 {}", pid.trim())])
                        .status();
                }
            }
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}
