//! The process-wide embedded broker behind `embedded://` and empty URLs.

use std::sync::Arc;

use crate::transport::Transport;
use crate::Error;

/// The transport to this process's embedded broker, started on first use.
pub(crate) async fn transport() -> Result<Arc<dyn Transport>, Error> {
    Err(Error::config(
        "the embedded broker is not available in this build",
    ))
}
