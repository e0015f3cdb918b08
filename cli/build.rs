//! Records the commit `arbor` is built from (`ARBOR_COMMIT` at compile time), which benchmark
//! reports carry so that two runs can be told apart by what they measured. A build outside a
//! git checkout says "unknown"; `ARBOR_COMMIT` set in the environment wins (packagers).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=ARBOR_COMMIT");
    let commit = std::env::var("ARBOR_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ARBOR_COMMIT={commit}");
    // Built again when HEAD moves: HEAD itself (a checkout), the branch it names (a commit),
    // and packed-refs (a gc); only those that exist, as cargo runs the script again on every
    // build for a path that does not.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = Path::new(&dir);
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let watched = ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref());
        for file in watched.map(|f| dir.join(f)).filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
}
