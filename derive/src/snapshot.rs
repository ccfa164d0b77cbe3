//! The macro's expansion of a small service, kept in
//! `derive/snapshots/greeter.rs` so a reader can see what
//! `#[warren::service]` writes (what `cargo expand` would show) and a
//! change to it shows up in review. The test fails when the expansion
//! differs from the file; `WARREN_BLESS=1 cargo test -p warren-derive`
//! rewrites the file instead. `tests/ui/pass/expanded_snapshot.rs` compiles
//! the file against the `warren` crate, so it stays real code.

use std::path::Path;

use quote::quote;

use crate::{emit, parse};

const HEADER: &str = "\
// The expansion of `#[warren::service]` for the service below, pretty-printed.
// Written by derive/src/snapshot.rs: `WARREN_BLESS=1 cargo test -p warren-derive`
// rewrites it, and the test fails while it differs from the macro's output.
//
// #[warren::service(topic = \"greeter\", version = \"1.2\", derive(Clone, Debug))]
// pub trait Greeter {
//     /// A call: the caller waits for the greeting.
//     async fn hello(&self, name: String) -> String;
//     /// A call whose error is the service's own type.
//     async fn divide(&self, a: i64, b: i64) -> Result<i64, DivideError>;
//     /// A cast: no reply.
//     #[cast]
//     async fn forget(&self, note: String);
// }

";

fn expansion() -> String {
    let attr = quote!(topic = "greeter", version = "1.2", derive(Clone, Debug));
    let item = quote! {
        pub trait Greeter {
            /// A call: the caller waits for the greeting.
            async fn hello(&self, name: String) -> String;
            /// A call whose error is the service's own type.
            async fn divide(&self, a: i64, b: i64) -> Result<i64, DivideError>;
            /// A cast: no reply.
            #[cast]
            async fn forget(&self, note: String);
        }
    };
    let service = match parse::Service::parse(attr, item) {
        Ok(service) => service,
        Err(e) => panic!("the snapshot's service does not parse: {e}"),
    };
    let file: syn::File = match syn::parse2(emit::emit(&service)) {
        Ok(file) => file,
        Err(e) => panic!("the expansion is not a Rust file: {e}"),
    };
    format!("{HEADER}{}", prettyplease::unparse(&file))
}

#[test]
fn expansion_matches_the_snapshot() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots/greeter.rs");
    let actual = expansion();
    if std::env::var_os("WARREN_BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        panic!(
            "the expansion differs from {} from line {} on:\n  now:  {:?}\n  file: {:?}\n\
             If the change is meant, rerun with WARREN_BLESS=1 and review the file's diff.",
            path.display(),
            line + 1,
            actual.lines().nth(line).unwrap_or("<end>"),
            expected.lines().nth(line).unwrap_or("<end>"),
        );
    }
}
