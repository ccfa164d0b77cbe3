//! The control socket's client side: one JSON line out, one back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

use super::{exit, Failure};

/// A connection to a broker's control socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects, or fails with 69 (unreachable) as `rabbitmqctl` does.
    pub fn connect(path: &Path) -> Result<Self, Failure> {
        let stream = UnixStream::connect(path).map_err(|e| unreachable(path, &e))?;
        let writer = stream.try_clone().map_err(|e| unreachable(path, &e))?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request`; the broker's `ok` value, or its error as a
    /// [`Failure`] with the exit code `code_of` gives the error's code.
    pub fn call(
        &mut self,
        request: &Value,
        code_of: impl Fn(&str) -> u8,
    ) -> Result<Value, Failure> {
        let lost = |e: std::io::Error| {
            Failure::new(
                exit::UNAVAILABLE,
                format!("lost the connection to the broker: {e}"),
            )
        };
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(lost)?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer).map_err(lost)? == 0 {
            return Err(Failure::new(
                exit::UNAVAILABLE,
                "the broker closed the control connection",
            ));
        }
        let answer: Value = serde_json::from_str(&answer).map_err(|e| {
            Failure::new(
                exit::SOFTWARE,
                format!("unreadable answer from the broker: {e}"),
            )
        })?;
        if let Some(ok) = answer.get("ok") {
            return Ok(ok.clone());
        }
        let code = answer
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("");
        let message = answer
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("the broker gave no reason");
        Err(Failure::new(code_of(code), message))
    }
}

fn unreachable(path: &Path, e: &std::io::Error) -> Failure {
    Failure::new(
        exit::UNAVAILABLE,
        format!(
            "unable to reach a warren broker on its control socket {}: {e}\n\
             Is it running (`warren broker --data-dir DIR`)? Give the same \
             --data-dir, or --ctl-socket PATH, to warren ctl.",
            path.display()
        ),
    )
}
