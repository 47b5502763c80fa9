//! The tools a test needs from the machine, had the way `./build.sh test` has them: scripts/lib.sh's
//! `need_prereqs` checks each by what it provides and, as root, installs the Debian package that
//! provides it. A test whose tool cannot be had fails with lib.sh's one line saying what to do.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Makes sure every prerequisite in `names` (lib.sh's names, as `./build.sh doctor` prints them)
/// works, installing what is missing; panics with lib.sh's message when one cannot be had.
pub fn need(names: &[&str]) {
    // One check per name per test process, and one install at a time.
    static DONE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !done.contains(*n))
        .collect();
    if missing.is_empty() {
        return;
    }
    let lib = crate::common::repo_root().join("scripts/lib.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg("source \"$0\" && need_prereqs \"$@\"")
        .arg(&lib)
        .args(&missing)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash for scripts/lib.sh: {e}"));
    assert!(
        out.status.success(),
        "this test needs {missing:?} (scripts/lib.sh need_prereqs; ./build.sh doctor tells how each \
         is checked):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    done.extend(missing.iter().map(|n| n.to_string()));
}
