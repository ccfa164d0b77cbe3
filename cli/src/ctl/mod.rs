//! `warren ctl`: `rabbitmqctl`'s commands and output for a warren broker,
//! through its control socket (`ctl.sock` in the broker's data directory;
//! no password: the socket's file permissions guard it).
//!
//! Options go anywhere on the line, as `rabbitmqctl`'s: `-p/--vhost`,
//! `-q/--quiet` (no "Listing …" banners), `-s/--silent` (no banners, no
//! table headers), `--no-table-headers`, `-t/--timeout` (for
//! `await_startup`), `--data-dir`, `--ctl-socket`. Exit codes are
//! `rabbitmqctl`'s: 64 usage, 65 data error (not found, invalid), 67 no
//! such user, 69 broker unreachable, 70 software error (exists already).

mod client;
mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// `warren ctl` arguments: everything after `ctl`, parsed as
/// `rabbitmqctl` parses its command line.
#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct CtlArgs {
    /// `[--data-dir DIR | --ctl-socket PATH] [-q] [-p VHOST] [--no-table-headers] COMMAND [ARGS]`;
    /// `warren ctl help` lists the commands.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `rabbitmqctl`'s exit codes.
pub mod exit {
    /// Bad usage: unknown command, wrong arguments.
    pub const USAGE: u8 = 64;
    /// Bad data: not found, invalid.
    pub const DATA: u8 = 65;
    /// No such user.
    pub const NO_USER: u8 = 67;
    /// The broker cannot be reached.
    pub const UNAVAILABLE: u8 = 69;
    /// Anything else (an object that exists already).
    pub const SOFTWARE: u8 = 70;
}

/// A failed command: what to print on stderr, and the exit code.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }
}

/// The parsed command line.
#[derive(Debug, Default)]
struct Options {
    data_dir: Option<PathBuf>,
    ctl_socket: Option<PathBuf>,
    quiet: bool,
    silent: bool,
    no_table_headers: bool,
    vhost: Option<String>,
    timeout: Option<u64>,
    if_empty: bool,
    if_unused: bool,
    positional: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, Failure> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| Failure::usage(format!("option {name} needs a value")))
            };
            match a.as_str() {
                "-q" | "--quiet" => o.quiet = true,
                "-s" | "--silent" => o.silent = true,
                "--no-table-headers" => o.no_table_headers = true,
                "-p" | "--vhost" => o.vhost = Some(value(a)?),
                "-t" | "--timeout" => {
                    let v = value(a)?;
                    o.timeout = Some(v.parse().map_err(|_| {
                        Failure::usage(format!("{a}: expected seconds, got '{v}'"))
                    })?);
                }
                "--data-dir" => o.data_dir = Some(value(a)?.into()),
                "--ctl-socket" => o.ctl_socket = Some(value(a)?.into()),
                "-e" | "--if-empty" => o.if_empty = true,
                "-u" | "--if-unused" => o.if_unused = true,
                // rabbitmqctl's node options: one node, the local one.
                "-n" | "--node" => {
                    value(a)?;
                }
                "-l" | "--longnames" => {}
                "-h" | "-?" | "--help" => o.positional.insert(0, "help".to_owned()),
                _ => {
                    if let Some(v) = a.strip_prefix("--vhost=") {
                        o.vhost = Some(v.to_owned());
                    } else if let Some(v) = a.strip_prefix("--data-dir=") {
                        o.data_dir = Some(v.into());
                    } else if let Some(v) = a.strip_prefix("--ctl-socket=") {
                        o.ctl_socket = Some(v.into());
                    } else if a.len() > 1 && a.starts_with('-') && a != "-" {
                        return Err(Failure::usage(format!("unknown option '{a}'")));
                    } else {
                        o.positional.push(a.clone());
                    }
                }
            }
        }
        Ok(o)
    }

    /// The control socket: `--ctl-socket`, else `ctl.sock` in the data directory.
    fn socket(&self) -> PathBuf {
        self.ctl_socket.clone().unwrap_or_else(|| {
            self.data_dir
                .clone()
                .unwrap_or_else(crate::data_dir::default_data_dir)
                .join(warren_broker::control::SOCKET_NAME)
        })
    }

    fn vhost(&self) -> &str {
        self.vhost.as_deref().unwrap_or("/")
    }

    /// Whether banners ("Listing queues …") are printed.
    fn banners(&self) -> bool {
        !(self.quiet || self.silent)
    }

    /// Whether a listing's header row is printed.
    fn headers(&self) -> bool {
        !(self.no_table_headers || self.silent)
    }
}

/// Runs `warren ctl`; the exit code is `rabbitmqctl`'s.
pub fn run(args: CtlArgs) -> ExitCode {
    let result = Options::parse(&args.args).and_then(|o| commands::run(&o));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("Error:\n{}", f.message);
            ExitCode::from(f.code)
        }
    }
}
