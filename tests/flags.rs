//! Every flag of the three programs, fed bad values: one usage line naming the flag, exit 2, no
//! panic, and never the value of a mistyped or repeated flag in the output (issue 14: 4, 5 and
//! "Also"). The flags are taken from each program's `--help`, so a new flag is covered as soon
//! as it is declared.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROGRAMS: [&str; 3] = [
    env!("CARGO_BIN_EXE_eks-connector-init"),
    env!("CARGO_BIN_EXE_eks-connector-agent"),
    env!("CARGO_BIN_EXE_eks-connector-proxy"),
];

/// `(flag, metavar)` of every flag `--help` lists with a value.
fn flags_of(program: &str) -> Vec<(String, String)> {
    let out = Command::new(program).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{program} --help: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let flags: Vec<(String, String)> = help
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let flag = words.next()?;
            let meta = words.next()?;
            let named = flag.starts_with("--") && flag.len() > 2 && !flag.ends_with(',');
            (named && meta.chars().any(|c| c.is_ascii_uppercase()) && meta != "AGENT_COMMAND...")
                .then(|| (flag.to_string(), meta.to_string()))
        })
        .collect();
    assert!(flags.len() >= 3, "no flags found in:\n{help}");
    flags
}

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Runs `program args` with no environment worth the name; a program still running after a few
/// seconds took the bad value (it is killed then, and the test fails).
fn run(program: &str, args: &[String]) -> Outcome {
    let dir = std::env::temp_dir().join(format!("flags-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("POD_NAME", "eks-connector-0")
        .env("RUST_LOG", "info")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .ok();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .ok();
    Outcome {
        code: status.and_then(|s| s.code()),
        stderr: stderr + &stdout,
    }
}

fn numeric(meta: &str) -> bool {
    matches!(meta, "DURATION" | "N" | "BYTES")
}

#[test]
fn every_flag_refuses_empty_negative_huge_and_malformed_values_with_exit_2() {
    let mut failures = Vec::new();
    for program in PROGRAMS {
        for (flag, meta) in flags_of(program) {
            let huge = if numeric(&meta) {
                "10000000000000000000".to_string()
            } else {
                format!("/{}", "a".repeat(5000))
            };
            let malformed = if numeric(&meta) {
                "12abc"
            } else {
                "bad value%"
            };
            for value in ["", "-1", &huge, malformed] {
                let out = run(program, &[format!("{flag}={value}")]);
                let ok = out.code == Some(2)
                    && !out.stderr.contains("panicked")
                    && out.stderr.contains(flag.as_str())
                    && out.stderr.trim().lines().count() == 1;
                if !ok {
                    let shown: String = value.chars().take(24).collect();
                    failures.push(format!(
                        "{program} {flag}={shown}: exit {:?}: {}",
                        out.code,
                        out.stderr.chars().take(300).collect::<String>()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Issue 14, 5: the value from the issue, for every duration flag of every program.
#[test]
fn huge_durations_are_usage_errors_not_panics() {
    let mut seen = 0;
    for program in PROGRAMS {
        for (flag, meta) in flags_of(program) {
            if meta != "DURATION" {
                continue;
            }
            seen += 1;
            for value in ["10000000000000000000", "1e300", "99999999999h"] {
                let out = run(program, &[format!("{flag}={value}")]);
                assert!(
                    out.code == Some(2) && !out.stderr.contains("panicked"),
                    "{program} {flag}={value}: exit {:?}\n{}",
                    out.code,
                    out.stderr
                );
                assert!(out.stderr.contains(flag.as_str()), "{}", out.stderr);
            }
        }
    }
    assert!(seen >= 5, "only {seen} duration flags found");
}

/// Issue 14, 4: a mistyped or repeated flag is named, its value never printed.
#[test]
fn mistyped_or_repeated_flags_never_print_their_value() {
    let secret = "SECRETVALUE1234567890abc";
    let init = PROGRAMS[0];
    let cases: Vec<Vec<String>> = vec![
        vec![format!("--activation-code={secret}")],
        vec![
            "--activation.code=AAAAAAAAAAAAAAAAAAAAAAAA".into(),
            format!("--activation.code={secret}"),
        ],
        vec![format!("--activation.code={secret}"), "--bogus".into()],
        vec!["--activation.code".into(), secret.into(), secret.into()],
    ];
    for args in cases {
        let out = run(init, &args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains(secret) && !out.stderr.contains("SECRETVALUE"),
            "{args:?} printed the value:\n{}",
            out.stderr
        );
    }
    for program in PROGRAMS {
        let out = run(program, &[format!("--state.bogus={secret}")]);
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert!(out.stderr.contains("--state.bogus"), "{}", out.stderr);
        assert!(!out.stderr.contains(secret), "{}", out.stderr);
        let out = run(
            program,
            &[
                "--health.addr=127.0.0.1:1".into(),
                format!("--health.addr={secret}"),
            ],
        );
        assert_eq!(out.code, Some(2), "{program}: {}", out.stderr);
        assert!(out.stderr.contains("--health.addr"), "{}", out.stderr);
        assert!(!out.stderr.contains(secret), "{}", out.stderr);
    }
}

/// One exit-code table: every program's `--help` shows the same one, and the README lists it.
#[test]
fn every_help_shows_the_one_exit_code_table_and_the_readme_has_it() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut tables = Vec::new();
    for program in PROGRAMS {
        let out = Command::new(program).arg("--help").output().unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        let table: Vec<String> = help
            .lines()
            .skip_while(|l| !l.starts_with("Exit codes"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        assert!(
            table.len() >= 10,
            "{program}: no exit-code table in:\n{help}"
        );
        for row in &table {
            let code = row.split_whitespace().next().unwrap();
            assert!(
                readme.contains(&format!("| {code} |")),
                "README lacks exit code {code}"
            );
        }
        tables.push(table);
    }
    assert!(
        tables.windows(2).all(|w| w[0] == w[1]),
        "the tables differ: {tables:#?}"
    );
}
