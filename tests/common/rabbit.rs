//! RabbitMQ nodes of a test's own, beside the system one: each with its own
//! name, AMQP and distribution ports, data, logs, configuration file and
//! plugins in a temporary directory, started with Debian's
//! `rabbitmq-server -detached` (a TLS listener needs a configuration file);
//! and clusters of them joined with `rabbitmqctl join_cluster`, as an
//! operator would (how the failover tests scale past one machine on one).
//!
//! Debian's wrappers run RabbitMQ as the `rabbitmq` user (`su` keeps the
//! `RABBITMQ_*` environment), so this needs root, as CI has; elsewhere a
//! node cannot start, which the callers print and skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::free_port;

/// A directory of the test's own under the system's temporary directory,
/// readable and writable by the `rabbitmq` user too (Debian's
/// `rabbitmq-server`, run as root, runs the node as `rabbitmq`); removed on
/// drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory.
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(super::unique(prefix));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        share(&dir, 0o777);
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn share(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("set permissions");
}

pub fn write_shared(path: &Path, contents: &str) {
    std::fs::write(path, contents).expect("write a test file");
    // Keys too: the test's own throw-away keys, read by a node running as
    // another user.
    share(path, 0o644);
}

/// A RabbitMQ node of the test's own, beside the system one: its own name,
/// ports, data, logs and configuration in a temporary directory; stopped
/// and removed on drop.
pub struct RabbitNode {
    /// The node's name (`NAME@localhost`), for `rabbitmqctl -n`.
    pub name: String,
    /// Its plain AMQP port.
    pub amqp_port: u16,
    dir: TempDir,
}

impl RabbitNode {
    /// Starts a node named `name@localhost` listening for AMQP on a free
    /// port, with `config` appended to its `rabbitmq.conf` (sysctl format:
    /// TLS listeners, auth mechanisms) and `plugins` enabled. `None`, after
    /// printing why, when RabbitMQ cannot be started here (not installed,
    /// not allowed to run it): the caller skips.
    pub fn start(name: &str, config: &str, plugins: &[&str]) -> Option<RabbitNode> {
        let dir = TempDir::new("warren-rabbit");
        let node = format!("{}@localhost", super::unique(name));
        let amqp_port = free_port();
        let dist_port = free_port();
        let conf = dir.join("rabbitmq.conf");
        write_shared(
            &conf,
            &format!("listeners.tcp.default = {amqp_port}\nloopback_users = none\n{config}\n"),
        );
        let plugins_file = dir.join("enabled_plugins");
        write_shared(&plugins_file, &format!("[{}].\n", plugins.join(",")));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create node directories");
            share(&dir.join(sub), 0o777);
        }
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins_file)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("node.pid"))
            .status();
        match started {
            Ok(status) if status.success() => {}
            other => {
                println!("SKIP: cannot start a RabbitMQ node of the test's own: {other:?}");
                return None;
            }
        }
        let node = RabbitNode {
            name: node,
            amqp_port,
            dir,
        };
        // `-detached` returns before the node registers with epmd, and
        // `await_startup` fails at once on a node it cannot reach yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let out = node.ctl_output(&["await_startup", "--timeout", "60"]);
            match out {
                Ok(out) if out.status.success() => return Some(node),
                Ok(out) if std::time::Instant::now() >= deadline => {
                    println!(
                        "SKIP: RabbitMQ node {} did not start within 120 s: {}\n{}",
                        node.name,
                        String::from_utf8_lossy(&out.stderr),
                        node.log_tail()
                    );
                    return None;
                }
                Err(e) => {
                    println!("SKIP: cannot run rabbitmqctl: {e}");
                    return None;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    fn ctl_output(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
    }

    /// Runs `rabbitmqctl -n NODE args`, returning its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args).expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The end of the node's log files, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("log")) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let start = text.len().saturating_sub(4000);
                    let start = (start..text.len())
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(text.len());
                    tail.push_str(&format!(
                        "== {}\n{}",
                        entry.path().display(),
                        &text[start..]
                    ));
                }
            }
        }
        tail
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self.ctl_output(&["stop"]);
    }
}

impl RabbitNode {
    /// Waits until the node runs RabbitMQ again after `start_app`.
    pub fn await_startup(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match self.ctl_output(&["await_startup", "--timeout", "120"]) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) if Instant::now() >= deadline => {
                    return Err(String::from_utf8_lossy(&out.stderr).into_owned())
                }
                Err(e) => return Err(e.to_string()),
                Ok(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Stops RabbitMQ on the node (its Erlang VM stays), as a node failure
    /// looks to clients: their connections close, its port refuses.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    /// Starts RabbitMQ on the node again and waits until it runs.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        if let Err(e) = self.await_startup() {
            panic!("start_app on {}: {e}\n{}", self.name, self.log_tail());
        }
    }
}

/// Nodes clustered together, stopped and removed on drop.
pub struct RabbitCluster {
    /// The nodes, the first being the one the others joined.
    pub nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Starts `size` nodes and clusters them; `None`, after printing why,
    /// when RabbitMQ nodes cannot start here.
    pub fn start(size: usize) -> Option<Self> {
        super::ensure_rabbitmq();
        let mut nodes = Vec::new();
        for _ in 0..size {
            nodes.push(RabbitNode::start("warren-cluster", "", &[])?);
        }
        let first = nodes[0].name.clone();
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]);
            node.ctl(&["join_cluster", &first]);
            node.start_app();
        }
        Some(RabbitCluster { nodes })
    }

    /// An oslo-style `rabbit://` URL over the nodes in `order` (fail-over
    /// order), with quorum queues.
    pub fn url(&self, order: &[usize]) -> String {
        let hosts: Vec<String> = order
            .iter()
            .map(|&i| format!("guest:guest@127.0.0.1:{}", self.nodes[i].amqp_port))
            .collect();
        format!("rabbit://{}/?rabbit_quorum_queue=true", hosts.join(","))
    }
}
