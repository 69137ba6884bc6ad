//! The README's example is `examples/push.rs`, which every build compiles
//! and clippy lints; this keeps the two the same text.

#[test]
fn readme_example_is_the_compiled_example() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/push.rs");
    assert!(
        readme.contains(&format!("```rust\n{example}```")),
        "client/README.md's example differs from client/examples/push.rs: copy the file into \
         the README's ```rust block"
    );
}
