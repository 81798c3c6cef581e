//! The vendored files are the recorded h2 release's with herald.patch applied,
//! byte for byte (`vendor/update-h2-hpack.sh --check`). The release comes from
//! cargo's download cache (the workspace builds h2 for hyper) or from crates.io;
//! without either, the check is skipped.

use std::path::Path;
use std::process::Command;

#[test]
fn vendored_files_are_the_recorded_release_with_herald_patch() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../update-h2-hpack.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(77) => eprintln!("skipped: {stderr}"),
        _ => panic!("{} --check: {}\n{stderr}", script.display(), out.status),
    }
}
