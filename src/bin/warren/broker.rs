//! `warren broker`: the embedded broker as a standalone AMQP server.

use std::net::SocketAddr;

use clap::Args;

/// `warren broker` options.
#[derive(Args)]
pub struct BrokerArgs {
    /// Address to listen on (repeatable, e.g. also `[::1]:5672`).
    #[arg(long, default_value = "127.0.0.1:5672")]
    listen: Vec<SocketAddr>,
    /// A user as `name:password` (repeatable; default guest:guest).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// An extra virtual host (repeatable; `/` always exists).
    #[arg(long = "vhost")]
    vhosts: Vec<String>,
    /// Limits a user on a vhost to names matching the configure, write and
    /// read regular expressions (repeatable), as RabbitMQ's set_permissions.
    #[arg(long = "permission", num_args = 5, value_names = ["USER", "VHOST", "CONFIGURE", "WRITE", "READ"])]
    permissions: Vec<String>,
}

pub async fn run(args: BrokerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = warren::broker::Broker::builder();
    for addr in args.listen {
        builder = builder.listen(addr);
    }
    for user in &args.users {
        let (name, password) = user
            .split_once(':')
            .ok_or_else(|| format!("--user {user:?}: expected NAME:PASSWORD"))?;
        builder = builder.user(name, password);
    }
    for vhost in &args.vhosts {
        builder = builder.vhost(vhost);
    }
    for p in args.permissions.chunks(5) {
        if let [user, vhost, configure, write, read] = p {
            builder = builder.permission(user, vhost, configure, write, read);
        }
    }
    let broker = builder.start().await?;
    for addr in broker.local_addrs() {
        tracing::info!(%addr, "warren broker listening");
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    broker.shutdown().await;
    Ok(())
}
