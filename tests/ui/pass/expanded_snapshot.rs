//! The checked-in expansion (derive/snapshots/greeter.rs, kept equal to the
//! macro's output by warren-derive's snapshot test) is code that compiles
//! against warren as it is, and works as the macro's output does.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("cannot divide {0} by zero")]
pub struct DivideError(i64);

include!("../../../derive/snapshots/greeter.rs");

struct English;

impl Greeter for English {
    async fn hello(&self, name: String) -> String {
        format!("Hello, {name}!")
    }
    async fn divide(&self, a: i64, b: i64) -> Result<i64, DivideError> {
        a.checked_div(b).ok_or(DivideError(a))
    }
    async fn forget(&self, _note: String) {}
}

fn main() {
    let _server = GreeterServer::new(English);
    let _request = GreeterRequest::Forget { note: "x".into() }.clone();
}
