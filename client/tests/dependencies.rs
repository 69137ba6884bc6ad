//! The client crate is what backends link, so its dependencies are a promise:
//! the wire format, a JSON check and serde's traits, nothing of the server
//! (io_uring, JWT, CLI, config). This fails when a dependency outside that
//! list is added, so widening it is a decision made here, not an accident.
//!
//! It asks `cargo metadata` (declared dependencies only: no resolution, no
//! network) rather than reading Cargo.toml, so `workspace = true`, renames
//! and target-specific sections are all seen as cargo sees them.

use std::process::Command;

/// Crates the library may depend on, and why.
const ALLOWED: &[(&str, &str)] = &[
    ("rkyv", "the push socket frames are rkyv archives"),
    (
        "serde_json",
        "a payload must be one JSON value; --ndjson lines",
    ),
    (
        "serde_core",
        "serde's traits, implemented by hand; already in serde_json's tree",
    ),
];

#[test]
fn library_dependencies_are_only_what_a_backend_needs() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .args(["--manifest-path", manifest])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let package = metadata["packages"]
        .as_array()
        .expect("a package list")
        .iter()
        .find(|p| p["name"] == "pushgate-client")
        .expect("pushgate-client is a workspace member");

    let mut linked: Vec<&str> = package["dependencies"]
        .as_array()
        .expect("a dependency list")
        .iter()
        // kind null: normal; "build": build script. Dev-dependencies only
        // build the tests and are free.
        .filter(|dep| dep["kind"] != "dev")
        .map(|dep| dep["name"].as_str().expect("a dependency name"))
        .collect();
    linked.sort_unstable();
    let unexpected: Vec<&str> = linked
        .iter()
        .copied()
        .filter(|name| !ALLOWED.iter().any(|(allowed, _)| allowed == name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "pushgate-client depends on {unexpected:?}, outside the allowed {:?}: backends \
         link this crate, so keep server-side crates out of it (or allow one here, with \
         the reason)",
        ALLOWED.iter().map(|(name, _)| *name).collect::<Vec<_>>()
    );
    assert!(
        linked.contains(&"rkyv"),
        "the metadata was read: {linked:?}"
    );
}
