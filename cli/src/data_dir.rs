//! Where `warren broker` keeps its state and `warren ctl` finds the broker's control socket.

use std::path::PathBuf;

/// The default data directory: `$XDG_DATA_HOME/warren`, else
/// `$HOME/.local/share/warren`, else `warren-data` in the working directory.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("warren");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/warren"),
        None => PathBuf::from("warren-data"),
    }
}
