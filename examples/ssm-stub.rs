//! A local stand-in for AWS SSM, for `./build.sh demo` and for trying the pod by hand: the same
//! strict TLS stub the tests use (tests/support/ssm_stub.rs) — RegisterManagedInstance for init,
//! the SSM agent's signed RequestManagedInstanceRoleToken and UpdateManagedInstancePublicKey.
//!
//!   cargo run --example ssm-stub -- ACTIVATION_ID ACTIVATION_CODE [INFO_DIR]
//!
//! Prints its URL and the CA file to trust (pass it to init as AWS_CA_BUNDLE); with INFO_DIR, also
//! writes them to INFO_DIR/url and INFO_DIR/ca-path, and a file INFO_DIR/rotate makes the next
//! token answer tell the agent to rotate its key (the file is then removed).
//! `SSM_STUB_TOKEN_SECONDS` sets the credentials' lifetime (the agent asks again at half of it).
//! Logs each call; runs until killed.

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
    if let Some(secs) = std::env::var("SSM_STUB_TOKEN_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        stub.set_token_lifetime(Duration::from_secs(secs));
    }
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
        if let Some(dir) = args.get(2) {
            let trigger = std::path::Path::new(dir).join("rotate");
            if std::fs::remove_file(&trigger).is_ok() {
                stub.rotate_on_next_token();
                println!("ssm-stub: the next token answer says UpdateKeyPair: true");
            }
        }
        for r in &requests[seen..] {
            match (&r.instance_id, &r.signed_by) {
                (Some(id), _) => println!(
                    "ssm-stub: RegisterManagedInstance -> {id} (request id {})",
                    r.request_id
                ),
                (None, Some((id, key))) => println!(
                    "ssm-stub: {} by {id}, RSA-PSS signature verified with its key #{key} -> {}",
                    r.action, r.status
                ),
                (None, None) => println!(
                    "ssm-stub: {} {} {} -> {}",
                    r.action, r.method, r.path, r.status
                ),
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
