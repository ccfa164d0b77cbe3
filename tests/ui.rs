//! Compile errors of `#[warren::service]`, pinned with trybuild.

#[test]
fn macro_errors_are_spanned_and_clear() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
