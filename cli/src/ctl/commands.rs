//! Each `warren ctl` command: its arguments, its request, and its output
//! as `rabbitmqctl` prints it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warren_broker::control::info::Listing;

use super::client::Client;
use super::{exit, Failure, Options};

/// The commands, for `help` and for "not found".
const COMMANDS: &[(&str, &str)] = &[
    ("await_startup", "waits for the broker to start"),
    ("status", "displays the broker's status"),
    ("list_queues [<column> ...]", "lists a vhost's queues"),
    ("list_exchanges [<column> ...]", "lists a vhost's exchanges"),
    ("list_bindings [<column> ...]", "lists a vhost's bindings"),
    (
        "list_connections [<column> ...]",
        "lists client connections",
    ),
    ("list_channels [<column> ...]", "lists channels"),
    ("list_consumers [<column> ...]", "lists a vhost's consumers"),
    ("add_user <username> <password>", "adds a user"),
    ("delete_user <username>", "deletes a user"),
    (
        "change_password <username> <password>",
        "sets a user's password",
    ),
    ("set_user_tags <username> <tag> ...", "sets a user's tags"),
    ("list_users", "lists users"),
    ("add_vhost <vhost>", "adds a vhost"),
    ("delete_vhost <vhost>", "deletes a vhost"),
    ("list_vhosts [<column> ...]", "lists vhosts"),
    (
        "set_permissions [-p <vhost>] <username> <conf> <write> <read>",
        "sets a user's permissions on a vhost",
    ),
    (
        "clear_permissions [-p <vhost>] <username>",
        "revokes a user's permissions",
    ),
    (
        "list_permissions [-p <vhost>]",
        "lists a vhost's permissions",
    ),
    (
        "list_user_permissions <username>",
        "lists a user's permissions",
    ),
    (
        "purge_queue [-p <vhost>] <queue>",
        "drops a queue's ready messages",
    ),
    (
        "delete_queue [-p <vhost>] <queue> [--if-empty|-e] [--if-unused|-u]",
        "deletes a queue",
    ),
    (
        "close_connection <name> <reason>",
        "closes a client connection",
    ),
    (
        "export_definitions <file|->",
        "writes RabbitMQ's definitions JSON",
    ),
    (
        "import_definitions <file|->",
        "loads RabbitMQ's definitions JSON",
    ),
];

/// Runs the command of `o`.
pub fn run(o: &Options) -> Result<(), Failure> {
    let Some((command, args)) = o.positional.split_first() else {
        return Err(Failure::usage(usage()));
    };
    let command = command.as_str();
    if command == "help" {
        println!("{}", usage());
        return Ok(());
    }
    if let Some(listing) = Listing::of_command(command) {
        return list(o, command, listing, args);
    }
    match command {
        "await_startup" => await_startup(o, args),
        "list_user_permissions" => {
            let [user] = exactly(args)?;
            let answer = call(o, json!({"command": "list_user_permissions", "user": user}))?;
            banner(o, format!("Listing permissions for user \"{user}\" ..."));
            print_rows(o, &["vhost", "configure", "write", "read"], &answer);
            Ok(())
        }
        "status" => status(o, args),
        "add_user" => {
            let [user, password] = exactly(args)?;
            banner(o, format!("Adding user \"{user}\" ..."));
            call(
                o,
                json!({"command": "add_user", "user": user, "password": password}),
            )?;
            if o.banners() {
                println!(
                    "Done. Don't forget to grant the user permissions to some virtual hosts! \
                     See 'warren ctl help' (set_permissions) to learn more."
                );
            }
            Ok(())
        }
        "delete_user" => {
            let [user] = exactly(args)?;
            banner(o, format!("Deleting user \"{user}\" ..."));
            call(o, json!({"command": "delete_user", "user": user})).map(drop)
        }
        "change_password" => {
            let [user, password] = exactly(args)?;
            banner(o, format!("Changing password for user \"{user}\" ..."));
            call(
                o,
                json!({"command": "change_password", "user": user, "password": password}),
            )
            .map(drop)
        }
        "set_user_tags" => {
            let Some((user, tags)) = args.split_first() else {
                return Err(Failure::usage(
                    "Error (argument validation): not enough arguments.",
                ));
            };
            banner(
                o,
                format!(
                    "Setting tags for user \"{user}\" to [{}] ...",
                    tags.join(", ")
                ),
            );
            call(
                o,
                json!({"command": "set_user_tags", "user": user, "tags": tags}),
            )
            .map(drop)
        }
        "add_vhost" => {
            let [vhost] = exactly(args)?;
            banner(o, format!("Adding vhost \"{vhost}\" ..."));
            call(o, json!({"command": "add_vhost", "vhost": vhost})).map(drop)
        }
        "delete_vhost" => {
            let [vhost] = exactly(args)?;
            banner(o, format!("Deleting vhost \"{vhost}\" ..."));
            call(o, json!({"command": "delete_vhost", "vhost": vhost})).map(drop)
        }
        "set_permissions" => {
            let [user, configure, write, read] = exactly(args)?;
            let vhost = o.vhost();
            banner(
                o,
                format!("Setting permissions for user \"{user}\" in vhost \"{vhost}\" ..."),
            );
            let request = json!({
                "command": "set_permissions", "vhost": vhost, "user": user,
                "configure": configure, "write": write, "read": read,
            });
            call(o, request).map(drop)
        }
        "clear_permissions" => {
            let [user] = exactly(args)?;
            let vhost = o.vhost();
            banner(
                o,
                format!("Clearing permissions for user \"{user}\" in vhost \"{vhost}\" ..."),
            );
            call(
                o,
                json!({"command": "clear_permissions", "vhost": vhost, "user": user}),
            )
            .map(drop)
        }
        "purge_queue" => {
            let [queue] = exactly(args)?;
            let vhost = o.vhost();
            banner(o, format!("Purging queue '{queue}' in vhost '{vhost}' ..."));
            call(
                o,
                json!({"command": "purge_queue", "vhost": vhost, "queue": queue}),
            )
            .map(drop)
        }
        "delete_queue" => {
            let [queue] = exactly(args)?;
            let vhost = o.vhost();
            banner(
                o,
                format!("Deleting queue '{queue}' on vhost '{vhost}' ..."),
            );
            let request = json!({
                "command": "delete_queue", "vhost": vhost, "queue": queue,
                "if_empty": o.if_empty, "if_unused": o.if_unused,
            });
            let answer = call(o, request)?;
            let n = answer.get("messages").and_then(Value::as_u64).unwrap_or(0);
            println!("Queue was successfully deleted with {n} ready messages");
            Ok(())
        }
        "close_connection" => {
            let [name, reason] = exactly(args)?;
            banner(o, format!("Closing connection {name}, reason: {reason}..."));
            call(
                o,
                json!({"command": "close_connection", "connection": name, "reason": reason}),
            )
            .map(drop)
        }
        "export_definitions" => {
            let [file] = exactly(args)?;
            let answer = call(o, json!({"command": "export_definitions"}))?;
            let text = answer
                .get("definitions")
                .map(Value::to_string)
                .unwrap_or_default();
            if file == "-" {
                println!("{text}");
                return Ok(());
            }
            banner(
                o,
                format!("Exporting definitions in JSON to a file at \"{file}\" ..."),
            );
            std::fs::write(file, text)
                .map_err(|e| Failure::new(exit::DATA, format!("cannot write {file}: {e}")))
        }
        "import_definitions" => {
            let [file] = exactly(args)?;
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| Failure::new(exit::DATA, format!("cannot read stdin: {e}")))?
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| Failure::new(exit::DATA, format!("cannot read {file}: {e}")))?
            };
            let definitions: Value = serde_json::from_str(&text).map_err(|e| {
                Failure::new(
                    exit::DATA,
                    format!("{file}: definitions are not valid JSON: {e}"),
                )
            })?;
            banner(
                o,
                format!("Importing definitions in JSON from a file at \"{file}\" ..."),
            );
            let answer = call(
                o,
                json!({"command": "import_definitions", "definitions": definitions}),
            )?;
            if let Some(ignored) = answer.get("ignored").and_then(Value::as_array) {
                for i in ignored.iter().filter_map(Value::as_str) {
                    eprintln!("Ignored (warren does not keep them): {i}");
                }
            }
            if o.banners() {
                println!("Successfully imported definitions.");
            }
            Ok(())
        }
        other => Err(Failure::usage(format!(
            "Command '{other}' not found.\n\n{}",
            usage()
        ))),
    }
}

fn usage() -> String {
    let mut s = String::from(
        "Usage: warren ctl [--data-dir DIR | --ctl-socket PATH] [-q] [-p VHOST] \
         [--no-table-headers] <command> [<args>]\n\nCommands:\n",
    );
    for (c, what) in COMMANDS {
        s.push_str(&format!("   {c:<66} {what}\n"));
    }
    s
}

/// Exactly `N` arguments, or 64 as `rabbitmqctl`'s argument validation.
fn exactly<const N: usize>(args: &[String]) -> Result<[&str; N], Failure> {
    match args.len() {
        n if n < N => Err(Failure::usage(
            "Error (argument validation): not enough arguments.",
        )),
        n if n > N => Err(Failure::usage(
            "Error (argument validation): too many arguments.",
        )),
        _ => {
            let mut out = [""; N];
            for (slot, a) in out.iter_mut().zip(args) {
                *slot = a.as_str();
            }
            Ok(out)
        }
    }
}

fn banner(o: &Options, text: String) {
    if o.banners() {
        println!("{text}");
    }
}

/// The exit code for the broker's error `code` (`rabbitmqctl`'s: 67 for
/// a missing user, 70 for one that exists already, 65 for the rest).
fn code_of(code: &str) -> u8 {
    match code {
        "no_such_user" => exit::NO_USER,
        "user_exists" => exit::SOFTWARE,
        "usage" => exit::USAGE,
        "no_such_vhost" | "not_found" | "invalid" | "refused" => exit::DATA,
        _ => exit::SOFTWARE,
    }
}

fn call(o: &Options, request: Value) -> Result<Value, Failure> {
    Client::connect(&o.socket())?.call(&request, code_of)
}

/// A `list_*` command: banner, header row, tab-separated rows.
fn list(o: &Options, command: &str, listing: Listing, args: &[String]) -> Result<(), Failure> {
    let columns: Vec<&str> = if args.is_empty() {
        listing.default_columns().to_vec()
    } else {
        let unknown: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|c| !listing.keys().contains(c))
            .collect();
        if !unknown.is_empty() {
            return Err(Failure::usage(format!(
                "Error (argument validation): Info key(s) {} are not supported\n\
                 Supported: {}",
                unknown.join(","),
                listing.keys().join(", ")
            )));
        }
        args.iter().map(String::as_str).collect()
    };
    let vhost = o.vhost();
    let rows = call(o, json!({"command": command, "vhost": vhost}))?;
    if o.banners() {
        match listing {
            Listing::Queues => {
                println!("Timeout: 60.0 seconds ...");
                println!("Listing queues for vhost {vhost} ...");
            }
            Listing::Exchanges => println!("Listing exchanges for vhost {vhost} ..."),
            Listing::Bindings => println!("Listing bindings for vhost {vhost}..."),
            Listing::Connections => println!("Listing connections ..."),
            Listing::Channels => println!("Listing channels ..."),
            Listing::Consumers => println!("Listing consumers in vhost {vhost} ..."),
            Listing::Users => println!("Listing users ..."),
            Listing::Vhosts => println!("Listing vhosts ..."),
            Listing::Permissions => println!("Listing permissions for vhost \"{vhost}\" ..."),
        }
    }
    print_rows(o, &columns, &rows);
    Ok(())
}

/// A listing's header row (unless turned off) and its rows, tab-separated.
fn print_rows(o: &Options, columns: &[&str], answer: &Value) {
    let rows = answer
        .get("rows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = String::new();
    if o.headers() {
        out.push_str(&columns.join("\t"));
        out.push('\n');
    }
    for row in &rows {
        let cells: Vec<&str> = columns
            .iter()
            .map(|c| row.get(*c).and_then(Value::as_str).unwrap_or(""))
            .collect();
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    print!("{out}");
}

/// `await_startup`: waits (up to `-t` seconds, default 300, as
/// `rabbitmqctl`) until the broker answers on its control socket.
fn await_startup(o: &Options, args: &[String]) -> Result<(), Failure> {
    let [] = exactly(args)?;
    let deadline = Instant::now() + Duration::from_secs(o.timeout.unwrap_or(300));
    let path = o.socket();
    loop {
        let attempt = Client::connect(&path)
            .and_then(|mut c| c.call(&json!({"command": "await_startup"}), code_of));
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `status`, laid out as `rabbitmqctl status`.
fn status(o: &Options, args: &[String]) -> Result<(), Failure> {
    let [] = exactly(args)?;
    let s = call(o, json!({"command": "status"}))?;
    let num = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut out = String::new();
    if o.banners() {
        out.push_str("Status of node warren ...\n");
    }
    out.push_str("Runtime\n\n");
    out.push_str(&format!("OS PID: {}\n", num("pid")));
    out.push_str(&format!("OS: {}\n", std::env::consts::OS));
    out.push_str(&format!("Uptime (seconds): {}\n", num("uptime_seconds")));
    out.push_str(&format!(
        "warren version: {}\n",
        s.get("version").and_then(Value::as_str).unwrap_or("")
    ));
    out.push_str(&format!(
        "Control socket: {}\n\nListeners\n\n",
        o.socket().display()
    ));
    for l in s
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if let Some((protocol, addr)) = l.split_once(' ') {
            let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
            out.push_str(&format!(
                "Interface: {host}, port: {port}, protocol: {protocol}, purpose: AMQP 0-9-1\n"
            ));
        }
    }
    out.push_str("\nMemory\n\n");
    out.push_str(&format!(
        "Total memory used: {} bytes\nMemory high watermark: {} bytes\n",
        num("memory_used"),
        num("memory_high_watermark")
    ));
    out.push_str("\nTotals\n\n");
    out.push_str(&format!(
        "Connection count: {}\nVirtual host count: {}\nQueue count: {}\n",
        num("connections"),
        num("vhosts"),
        num("queues")
    ));
    out.push_str("\nAlarms\n\n");
    let alarm = s.get("memory_alarm").and_then(Value::as_bool) == Some(true);
    out.push_str(if alarm { "memory\n" } else { "(none)\n" });
    print!("{out}");
    Ok(())
}
