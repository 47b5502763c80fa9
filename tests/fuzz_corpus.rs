//! Replays every committed fuzz corpus file (fuzz/corpus/TARGET/*) through its target's function
//! once, on stable Rust, so that a crash found by `./build.sh fuzz` stays fixed. The functions
//! are the fuzz targets' own (fuzz/src/lib.rs); a target without a corpus fails.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use std::path::PathBuf;

/// A target's name (its corpus directory) and its function.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 8] = [
    ("request_head", targets::request_head),
    ("chunked", targets::chunked),
    ("response", targets::response),
    ("policy", targets::policy),
    ("differential", targets::differential),
    ("vault", targets::vault),
    ("secret", targets::secret),
    ("no_proxy", targets::no_proxy),
];

#[test]
fn every_fuzz_target_replays_its_committed_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!("{}: {e}: every target needs committed seeds", dir.display())
            })
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} holds no seeds", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {name} fails on {}",
                f.display()
            );
        }
        eprintln!("{name}: {} corpus files replayed", files.len());
    }
}
