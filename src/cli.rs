//! What the mains share: each flag declared once ([`Flag`]: name, value, default, help, what
//! it accepts), `--help` generated from those declarations, every value checked where it is
//! parsed, usage errors that name the flag (never the value of a mistyped or repeated flag, which
//! may be the activation code), the shared flags ([`STATE_FLAGS`], [`HEALTH_FLAG`]), one
//! exit-code table ([`EXIT_CODES`]) and logging set-up.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

/// Exit code for a usage error, as most Unix tools use.
pub const EXIT_USAGE: i32 = 2;

/// Every exit code of the three programs: (code, programs, meaning). Shown in each `--help` and
/// in the README.
pub const EXIT_CODES: &[(i32, &str, &str)] = &[
    (0, "all", "done (init), or the SSM agent exited 0 (agent), or stopped by a signal (proxy)"),
    (1, "all", "internal error; the proxy could not serve (socket, health address, signals)"),
    (2, "all", "missing, unknown, repeated or malformed flag"),
    (3, "init, agent", "configuration: POD_NAME, endpoint, AWS_CA_BUNDLE, proxy URL, Kubernetes environment, health address"),
    (10, "init", "SSM: InvalidActivation (wrong id/code pair, deleted activation)"),
    (11, "init", "SSM: ActivationExpired"),
    (12, "init", "SSM: any other rejection (RegistrationLimitExceeded, InvalidPublicKey, ...)"),
    (13, "init", "SSM unreachable: throttling, 5xx, timeouts or connection errors until the deadline"),
    (14, "init", "SSM endpoint DNS or TLS failure"),
    (15, "init", "the egress proxy refused the tunnel (403, ...) or wants credentials (407)"),
    (20, "init", "Kubernetes RBAC refused an operation on the state Secret"),
    (21, "init", "the state Secret holds unparseable content (left untouched)"),
    (22, "init", "Kubernetes API error or unreachable"),
    (23, "init", "the Vault directory cannot be written"),
    (24, "agent", "the Vault holds no complete registration (init did not run); agent not started"),
    (30, "init", "--install-launcher failed"),
    (126, "agent", "the SSM agent command cannot be executed"),
    (127, "agent", "the SSM agent command was not found"),
];

/// The exit-code table as text, for `--help`.
pub fn exit_codes_help() -> String {
    let mut s = String::from(
        "Exit codes (all three programs; the agent otherwise exits with the SSM agent's code):\n",
    );
    for (code, who, what) in EXIT_CODES {
        s.push_str(&format!("  {code:<4} {who:<12} {what}\n"));
    }
    s
}

/// A flag that was missing, malformed, unknown or repeated.
#[derive(Debug)]
pub struct UsageError {
    pub message: String,
    /// The usage line for the flag concerned, or the whole usage if there is no single flag.
    pub usage: String,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; usage: {}", self.message, self.usage)
    }
}

impl std::error::Error for UsageError {}

/// What a flag's value must be.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Present or absent; no value.
    Switch,
    /// Text of `min..=max` bytes, no whitespace or control characters.
    Text { min: usize, max: usize },
    /// A Kubernetes name (DNS-1123 label): lowercase letters, digits, `-`, at most 63.
    Name,
    /// An absolute path (at most 4096 bytes).
    Path,
    /// `HOST:PORT` or `:PORT` (all interfaces), port 0-65535 (0: the system picks one).
    Addr,
    /// `20s`, `500ms`, `2m`, `1h` or bare seconds, within bounds.
    Duration { min: Duration, max: Duration },
    /// A whole number within bounds.
    Count { min: u64, max: u64 },
    /// Bytes: `65536`, `64K`, `1M`, within bounds.
    Size { min: u64, max: u64 },
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// Checked by a function that says what is wrong.
    Check(fn(&str) -> Result<(), String>),
}

/// One flag, declared once.
#[derive(Clone, Copy)]
pub struct Flag {
    pub name: &'static str,
    /// The value's placeholder in `--help` (`DURATION`, `N`, `BYTES`, `DIR`, ...).
    pub value: &'static str,
    pub help: &'static str,
    /// Shown in `--help` and used when the flag is absent.
    pub default: Option<&'static str>,
    pub kind: Kind,
    /// A credential: its value never appears in a message.
    pub secret: bool,
}

impl Flag {
    /// A flag with a value; see the builder methods for the rest.
    pub const fn new(
        name: &'static str,
        value: &'static str,
        kind: Kind,
        help: &'static str,
    ) -> Flag {
        Flag {
            name,
            value,
            help,
            default: None,
            kind,
            secret: false,
        }
    }

    pub const fn default(mut self, default: &'static str) -> Flag {
        self.default = Some(default);
        self
    }

    pub const fn secret(mut self) -> Flag {
        self.secret = true;
        self
    }

    fn usage(&self, program: &str) -> String {
        format!("{program} {}  ({})", self.left(), self.help)
    }

    fn left(&self) -> String {
        match self.kind {
            Kind::Switch => self.name.to_string(),
            _ => format!("{} {}", self.name, self.value),
        }
    }
}

/// Durations beyond this are refused: no timeout or deadline of ours needs more than a day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The original's `--state.*` flags and `--serviceaccount.dir`: where the registration lives.
pub const STATE_FLAGS: [Flag; 4] = [
    Flag::new(
        "--state.baseDir",
        "DIR",
        Kind::Path,
        "the SSM agent's Vault",
    )
    .default(crate::state::AGENT_VAULT_DIR),
    Flag::new(
        "--state.secretNamePrefix",
        "PREFIX",
        Kind::Name,
        "state Secret name prefix",
    )
    .default("eks-connector-state"),
    Flag::new(
        "--state.secretNamespace",
        "NS",
        Kind::Name,
        "state Secret namespace",
    )
    .default("eks-connector"),
    Flag::new(
        "--serviceaccount.dir",
        "DIR",
        Kind::Path,
        "service-account token, ca.crt and namespace",
    )
    .default(crate::kube::DEFAULT_SERVICEACCOUNT_DIR),
];

/// `--health.addr`: where `/healthz` and `/readyz` are served (off when absent).
pub const HEALTH_FLAG: Flag = Flag::new(
    "--health.addr",
    "HOST:PORT",
    Kind::Addr,
    "serve /healthz and /readyz there (default off); :PORT means all interfaces",
);

/// A program: its name, what it does, its flags, and what follows `--` (if anything).
pub struct Program<'a> {
    pub name: &'static str,
    pub about: &'a str,
    pub flags: &'a [Flag],
    /// `Some(help)`: words after `--` are passed on (the agent command).
    pub trailing: Option<&'static str>,
}

/// What the caller should do with the arguments.
pub enum Start {
    Run(Parsed),
    /// `--help` or `--version`: print this and exit 0.
    Print(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Duration(Duration),
    Number(u64),
    On,
}

/// The checked values of one program's flags (defaults filled in).
pub struct Parsed {
    values: BTreeMap<&'static str, Value>,
    /// The words after `--`, when the program takes them (`None`: no `--` given).
    pub trailing: Option<Vec<String>>,
}

impl Parsed {
    pub fn text(&self, name: &str) -> Option<String> {
        match self.values.get(name) {
            Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        }
    }
    pub fn duration(&self, name: &str) -> Option<Duration> {
        match self.values.get(name) {
            Some(Value::Duration(d)) => Some(*d),
            _ => None,
        }
    }
    pub fn number(&self, name: &str) -> Option<u64> {
        match self.values.get(name) {
            Some(Value::Number(n)) => Some(*n),
            _ => None,
        }
    }
    pub fn switch(&self, name: &str) -> bool {
        self.values.get(name) == Some(&Value::On)
    }
}

impl Program<'_> {
    /// `--help`, generated from the declarations.
    pub fn help(&self) -> String {
        let mut s = format!(
            "{} {}\n{}\n\nFlags:\n",
            self.name,
            crate::VERSION,
            self.about
        );
        for f in self.flags {
            let default = f
                .default
                .map(|d| format!(" (default {d})"))
                .unwrap_or_default();
            s.push_str(&format!("  {:<36} {}{default}\n", f.left(), f.help));
        }
        if let Some(t) = self.trailing {
            s.push_str(&format!("  {:<36} {t}\n", "-- AGENT_COMMAND..."));
        }
        s.push_str("  --help, --version\n\nLogging: RUST_LOG=info|debug|trace (default info)\n\n");
        s.push_str(&exit_codes_help());
        s
    }

    fn error(&self, flag: Option<&Flag>, message: String) -> UsageError {
        UsageError {
            message,
            usage: flag
                .map(|f| f.usage(self.name))
                .unwrap_or_else(|| format!("{} --help", self.name)),
        }
    }

    /// Parses and checks `args` (without `argv[0]`).
    pub fn parse(&self, args: Vec<OsString>) -> Result<Start, UsageError> {
        let mut args = args.into_iter();
        let mut given: BTreeMap<&'static str, Value> = BTreeMap::new();
        let mut trailing = None;
        while let Some(arg) = args.next() {
            let Some(arg) = arg.to_str().map(str::to_string) else {
                return Err(self.error(None, "an argument is not valid UTF-8".into()));
            };
            match arg.as_str() {
                "-h" | "--help" => return Ok(Start::Print(self.help())),
                "--version" => {
                    return Ok(Start::Print(format!("{} {}", self.name, crate::VERSION)))
                }
                "--" if self.trailing.is_some() => {
                    trailing = Some(
                        args.by_ref()
                            .map(|a| a.to_string_lossy().into_owned())
                            .collect(),
                    );
                    break;
                }
                _ => {}
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            let Some(flag) = self.flags.iter().find(|f| f.name == name) else {
                return Err(self.unknown(name));
            };
            if given.contains_key(flag.name) {
                return Err(
                    self.error(Some(flag), format!("{} is given more than once", flag.name))
                );
            }
            let value = match (flag.kind, inline) {
                (Kind::Switch, None) => Value::On,
                (Kind::Switch, Some(_)) => {
                    return Err(self.error(Some(flag), format!("{} takes no value", flag.name)))
                }
                (_, Some(v)) => self.check(flag, &v)?,
                (_, None) => match args.next() {
                    Some(v) => self.check(flag, &v.to_string_lossy())?,
                    None => {
                        return Err(self.error(Some(flag), format!("{} needs a value", flag.name)))
                    }
                },
            };
            given.insert(flag.name, value);
        }
        let mut values = BTreeMap::new();
        for f in self.flags {
            let v = match (given.remove(f.name), f.default) {
                (Some(v), _) => v,
                (None, Some(d)) => self.check(f, d)?,
                (None, None) => continue,
            };
            values.insert(f.name, v);
        }
        Ok(Start::Run(Parsed { values, trailing }))
    }

    /// An unknown flag or word: its name only (up to `=`), never a value.
    fn unknown(&self, name: &str) -> UsageError {
        if !name.starts_with('-') {
            let hint = if self.trailing.is_some() {
                "; put the agent command after --"
            } else {
                ""
            };
            return self.error(None, format!("unexpected argument{hint}"));
        }
        let shown: String = name.chars().take(64).filter(|c| !c.is_control()).collect();
        self.error(None, format!("unknown flag {shown}"))
    }

    /// Checks one value against its flag's kind.
    fn check(&self, flag: &Flag, v: &str) -> Result<Value, UsageError> {
        let shown = if flag.secret {
            String::new()
        } else {
            format!("={}", quote(v))
        };
        let bad = |why: String| self.error(Some(flag), format!("{}{shown}: {why}", flag.name));
        if v.is_empty() {
            return Err(self.error(Some(flag), format!("{} has an empty value", flag.name)));
        }
        match flag.kind {
            Kind::Switch => Ok(Value::On),
            Kind::Text { min, max } => {
                if v.len() < min || v.len() > max {
                    return Err(bad(format!("must be {min} to {max} characters")));
                }
                if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad("must not contain spaces or control characters".into()));
                }
                Ok(Value::Text(v.to_string()))
            }
            Kind::Name => check_name(v)
                .map(|()| Value::Text(v.to_string()))
                .map_err(bad),
            Kind::Path => check_path(v)
                .map(|()| Value::Text(v.to_string()))
                .map_err(bad),
            Kind::Addr => listen_addr(v).map(Value::Text).map_err(bad),
            Kind::Duration { min, max } => match parse_duration(v) {
                Some(d) if d >= min && d <= max => Ok(Value::Duration(d)),
                _ => Err(bad(format!(
                    "must be a duration like 20s, 500ms or 2m, from {:?} to {:?}",
                    min, max
                ))),
            },
            Kind::Count { min, max } => match v.parse::<u64>() {
                Ok(n) if n >= min && n <= max => Ok(Value::Number(n)),
                _ => Err(bad(format!("must be a whole number from {min} to {max}"))),
            },
            Kind::Size { min, max } => match parse_size(v) {
                Some(n) if n >= min && n <= max => Ok(Value::Number(n)),
                _ => Err(bad(format!(
                    "must be a size like 65536, 64K or 1M, from {min} to {max} bytes"
                ))),
            },
            Kind::OneOf(words) => match words.contains(&v) {
                true => Ok(Value::Text(v.to_string())),
                false => Err(bad(format!("must be one of {}", words.join(", ")))),
            },
            Kind::Check(f) => f(v).map(|()| Value::Text(v.to_string())).map_err(bad),
        }
    }
}

/// A value as shown in an error: quoted, cut at 64 characters.
fn quote(v: &str) -> String {
    let cut: String = v.chars().take(64).collect();
    let more = if cut.len() < v.len() { "..." } else { "" };
    format!("{cut:?}{more}")
}

fn check_name(v: &str) -> Result<(), String> {
    let ok = v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    ok.then_some(()).ok_or_else(|| {
        "must be a Kubernetes name: at most 63 lowercase letters, digits and '-', not starting \
         or ending with '-'"
            .into()
    })
}

pub fn check_path(v: &str) -> Result<(), String> {
    if !v.starts_with('/') {
        return Err("must be an absolute path".into());
    }
    if v.len() > 4096 || v.split('/').any(|c| c.len() > 255) {
        return Err("is longer than a path can be".into());
    }
    if v.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// `HOST:PORT`, or `:PORT` meaning all interfaces (`0.0.0.0:PORT`): the one place this is done.
pub fn listen_addr(v: &str) -> Result<String, String> {
    let full = if v.starts_with(':') {
        format!("0.0.0.0{v}")
    } else {
        v.to_string()
    };
    let bad = || "must be HOST:PORT or :PORT with a port from 0 to 65535".to_string();
    let (host, port) = full.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
    match port.parse::<u16>() {
        Ok(_) if host_ok => Ok(full),
        _ => Err(bad()),
    }
}

/// `20s`, `500ms`, `2m`, `1h` or a bare number of seconds; `None` when malformed or beyond
/// [`MAX_DURATION`] (checked arithmetic: never a panic).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    if num.is_empty() || num.len() > 20 {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || secs < 0.0 || secs > MAX_DURATION.as_secs_f64() {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// A byte size: `131072`, `128K`, `1M`.
pub fn parse_size(v: &str) -> Option<u64> {
    let (num, mult) = match v.strip_suffix(['K', 'k']) {
        Some(n) => (n, 1u64 << 10),
        None => match v.strip_suffix(['M', 'm']) {
            Some(n) => (n, 1 << 20),
            None => (v, 1),
        },
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Prints a usage error and exits 2: the one way every main reports one.
pub fn usage_exit(program: &str, e: UsageError) -> ! {
    eprintln!("{program}: {e}");
    std::process::exit(EXIT_USAGE);
}

/// Parses the process's arguments for `program`: prints `--help`/`--version` and exits 0, or
/// prints a usage error and exits 2, or returns the checked values.
pub fn parse_or_exit(program: &Program<'_>, args: Vec<OsString>) -> Parsed {
    match program.parse(args) {
        Ok(Start::Run(p)) => p,
        Ok(Start::Print(s)) => {
            println!("{s}");
            std::process::exit(0);
        }
        Err(e) => usage_exit(program.name, e),
    }
}

/// The values of [`STATE_FLAGS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFlags {
    pub base_dir: String,
    pub secret_prefix: String,
    pub secret_namespace: String,
    pub serviceaccount_dir: String,
}

impl StateFlags {
    pub fn from(p: &Parsed) -> StateFlags {
        let get = |n: &str| p.text(n).unwrap_or_default();
        StateFlags {
            base_dir: get("--state.baseDir"),
            secret_prefix: get("--state.secretNamePrefix"),
            secret_namespace: get("--state.secretNamespace"),
            serviceaccount_dir: get("--serviceaccount.dir"),
        }
    }
}

/// Logging to stderr, `RUST_LOG` controlling it (default `info`).
pub fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info");
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .try_init();
}

/// The replica ordinal from `POD_NAME`: the text after the last `-` of a StatefulSet pod name.
pub fn ordinal_from_pod_name(pod_name: Option<&str>) -> Result<String, String> {
    let name = match pod_name {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err("POD_NAME is not set; set it from the pod's metadata.name \
                 (env valueFrom fieldRef metadata.name), e.g. eks-connector-0"
                .into())
        }
    };
    match name.rsplit_once('-') {
        Some((_, ord)) if !ord.is_empty() && ord.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(ord.to_string())
        }
        _ => Err(format!(
            "POD_NAME={name:?} does not end in -<ordinal>; the connector must run as a \
             StatefulSet pod such as eks-connector-0"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        Flag::new(
            "--agent.region",
            "REGION",
            Kind::Text { min: 1, max: 32 },
            "AWS region",
        ),
        Flag::new("--n", "N", Kind::Count { min: 1, max: 10 }, "a number").default("3"),
        Flag::new("--code", "CODE", Kind::Text { min: 4, max: 8 }, "a secret").secret(),
        Flag::new(
            "--wait",
            "DURATION",
            Kind::Duration {
                min: Duration::ZERO,
                max: MAX_DURATION,
            },
            "w",
        ),
        Flag::new("--x", "", Kind::Switch, "a switch"),
    ];

    fn parse(args: &[&str]) -> Result<Start, UsageError> {
        let p = Program {
            name: "prog",
            about: "about",
            flags: FLAGS,
            trailing: Some("the command"),
        };
        p.parse(args.iter().map(OsString::from).collect())
    }

    fn run(args: &[&str]) -> Parsed {
        match parse(args) {
            Ok(Start::Run(p)) => p,
            Ok(Start::Print(_)) => panic!("unexpected print"),
            Err(e) => panic!("{e}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match parse(args) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{args:?} accepted"),
        }
    }

    #[test]
    fn both_styles_defaults_switches_and_trailing_words() {
        let p = run(&[
            "--agent.region=eu-west-1",
            "--n",
            "5",
            "--x",
            "--",
            "/bin/a",
            "--n=1",
        ]);
        assert_eq!(p.text("--agent.region").as_deref(), Some("eu-west-1"));
        assert_eq!(p.number("--n"), Some(5));
        assert!(p.switch("--x"));
        assert_eq!(
            p.trailing,
            Some(vec!["/bin/a".to_string(), "--n=1".to_string()])
        );
        let p = run(&[]);
        assert_eq!(p.number("--n"), Some(3));
        assert_eq!(p.duration("--wait"), None);
        assert_eq!(p.trailing, None);
    }

    #[test]
    fn errors_quote_the_flag_usage_line_and_never_a_secret_value() {
        let e = err(&["--n=abc"]);
        assert!(e.contains("--n N") && e.contains("from 1 to 10"), "{e}");
        let e = err(&["--agent.region"]);
        assert!(
            e.contains("needs a value") && e.contains("AWS region"),
            "{e}"
        );
        let e = err(&["--code=SECRETXYZ"]);
        assert!(e.contains("--code") && !e.contains("SECRETXYZ"), "{e}");
        let e = err(&["--code=abcde", "--code=SECRETX"]);
        assert!(
            e.contains("more than once") && !e.contains("SECRETX"),
            "{e}"
        );
        let e = err(&["--cod=SECRETXYZ"]);
        assert!(
            e.contains("unknown flag --cod") && !e.contains("SECRETXYZ"),
            "{e}"
        );
        let e = err(&["SECRETXYZ"]);
        assert!(
            e.contains("unexpected argument") && !e.contains("SECRETXYZ"),
            "{e}"
        );
        assert!(err(&["--x=1"]).contains("takes no value"));
        assert!(err(&["--agent.region="]).contains("empty value"));
    }

    #[test]
    fn help_lists_flags_defaults_and_exit_codes() {
        let Ok(Start::Print(h)) = parse(&["--help"]) else {
            panic!()
        };
        assert!(h.contains("--n N") && h.contains("(default 3)"), "{h}");
        assert!(h.contains("24 ") && h.contains("127"), "{h}");
        assert!(matches!(parse(&["--version"]), Ok(Start::Print(v)) if v.contains(crate::VERSION)));
    }

    #[test]
    fn every_kind_checks_bounds() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "name",
                &["eks-connector", "a1"],
                &["-a", "A", "a_b", &"a".repeat(64)],
            ),
            (
                "path",
                &["/var/lib", "/"],
                &["rel", "-1", &format!("/{}", "a".repeat(300))],
            ),
            (
                "addr",
                &[":8082", "127.0.0.1:1", "[::1]:80"],
                &["8082", ":x", ":65536", "a b:1", "-1"],
            ),
        ];
        for (kind, good, bad) in cases {
            let f: fn(&str) -> bool = match *kind {
                "name" => |v| check_name(v).is_ok(),
                "path" => |v| check_path(v).is_ok(),
                _ => |v| listen_addr(v).is_ok(),
            };
            for g in *good {
                assert!(f(g), "{kind} {g}");
            }
            for b in *bad {
                assert!(!f(b), "{kind} {b}");
            }
        }
        assert_eq!(listen_addr(":8082").unwrap(), "0.0.0.0:8082");
    }

    #[test]
    fn durations_are_bounded_and_never_panic() {
        assert_eq!(parse_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        for bad in [
            "x",
            "-1s",
            "",
            "10000000000000000000",
            "1e300",
            "99999999999h",
            "NaNs",
            "25h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("99999999999999999999M"), None);
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal_from_pod_name(Some("eks-connector-1")).unwrap(), "1");
        assert!(ordinal_from_pod_name(Some("eks-connector")).is_err());
        assert!(ordinal_from_pod_name(Some("eks-connector-")).is_err());
        assert!(ordinal_from_pod_name(None).is_err());
    }
}
