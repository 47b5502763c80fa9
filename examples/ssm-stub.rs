//! A local stand-in for AWS SSM's RegisterManagedInstance, for `./build.sh demo` and for trying
//! the init container by hand: the same strict TLS stub the tests use (tests/support/ssm_stub.rs).
//!
//!   cargo run --example ssm-stub -- ACTIVATION_ID ACTIVATION_CODE [INFO_DIR]
//!
//! Prints its URL and the CA file to trust (pass it to init as AWS_CA_BUNDLE); with INFO_DIR, also
//! writes them to INFO_DIR/url and INFO_DIR/ca-path. Logs each registration; runs until killed.

#[path = "../tests/support/ssm_stub.rs"]
mod ssm_stub;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 || args[0].starts_with('-') {
        eprintln!("usage: ssm-stub ACTIVATION_ID ACTIVATION_CODE [INFO_DIR]");
        std::process::exit(2);
    }
    let stub = ssm_stub::Stub::start(&args[0], &args[1]);
    let ca = ssm_stub::pki().ca.display().to_string();
    if let Some(dir) = args.get(2) {
        let dir = std::path::Path::new(dir);
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(dir.join("ca-path"), &ca))
            .and_then(|_| std::fs::write(dir.join("url"), stub.url()));
        if let Err(e) = written {
            eprintln!("ssm-stub: cannot write {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
    println!("ssm-stub: listening on {} (trust {ca})", stub.url());
    let (mut seen, mut seen_violations) = (0, 0);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let requests = stub.requests();
        for r in &requests[seen..] {
            match &r.instance_id {
                Some(id) => println!(
                    "ssm-stub: RegisterManagedInstance -> {id} (request id {})",
                    r.request_id
                ),
                None => println!("ssm-stub: request refused: {} {}", r.method, r.path),
            }
        }
        let violations = stub.violations();
        for v in &violations[seen_violations..] {
            println!("ssm-stub: protocol violation: {v}");
        }
        seen = requests.len();
        seen_violations = violations.len();
    }
}
