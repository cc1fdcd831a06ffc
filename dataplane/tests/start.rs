//! meshd's start, refused: a bad state or setting ends in one clear line, and leaves no
//! flow-state file behind (no root needed: the loopback interface stands in for both ports,
//! and the refusal comes before they are opened).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

/// A directory of its own under the target directory, empty.
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("start-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn meshd(dir: &std::path::Path, addr6: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["--node", "n1", "--addr", "10.1.1.1", "--addr6", addr6])
        .args(["--uplink", "lo", "--tasks", "lo", "--flows", "1024"])
        .arg("--socket")
        .arg(dir.join("n1.sock"))
        .arg("--state")
        .arg(dir.join("n1.state"))
        .arg("--flow-state")
        .arg(dir.join("n1.flows"))
        .output()
        .unwrap()
}

#[test]
fn a_refused_start_says_why_and_leaves_no_flow_file_behind() {
    let dir = scratch("refused");
    let out = meshd(&dir, "fe80::1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "meshd started with a link-local --addr6: {err}"
    );
    assert!(
        err.contains("IPv6 address fe80::1 is link-local"),
        "the refusal names the address and why: {err}"
    );
    assert!(
        !dir.join("n1.flows").exists(),
        "the flow-state file this start made is gone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
