//! What the three thin mains share: flag parsing in the original's style (`--name=value` and
//! `--name value`), `--help`/`--version`, usage errors that name the flag, and logging set-up.

use std::ffi::OsString;
use std::fmt;
use std::str::FromStr;

/// Exit code for a usage error, as most Unix tools use.
pub const EXIT_USAGE: i32 = 2;

/// A flag that was missing, malformed or unknown.
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

/// One binary's flags: each flag is declared with its help line, so an error about a flag can
/// quote exactly that line.
pub struct Flags {
    args: pico_args::Arguments,
    program: &'static str,
    lines: Vec<(&'static str, &'static str)>,
}

/// What the caller should do after [`Flags::new`].
pub enum Start {
    Run(Flags),
    /// `--help` or `--version` was given; print this and exit 0.
    Print(String),
}

impl Flags {
    /// `lines` are `(flag, help)` pairs used for `--help` and for error messages.
    pub fn from_args(
        program: &'static str,
        about: &str,
        lines: &[(&'static str, &'static str)],
        args: Vec<OsString>,
    ) -> Start {
        let mut args = pico_args::Arguments::from_vec(args);
        let flags_lines = lines.to_vec();
        if args.contains(["-h", "--help"]) {
            let mut s = format!("{program} {}\n{about}\n\nFlags:\n", crate::VERSION);
            for (flag, help) in &flags_lines {
                s.push_str(&format!("  {flag:<34} {help}\n"));
            }
            s.push_str(
                "  --help, --version\n\nLogging: RUST_LOG=info|debug|trace (default info)\n",
            );
            return Start::Print(s);
        }
        if args.contains("--version") {
            return Start::Print(format!("{program} {}", crate::VERSION));
        }
        Start::Run(Flags {
            args,
            program,
            lines: flags_lines,
        })
    }

    fn usage_for(&self, name: &str) -> String {
        self.lines
            .iter()
            .find(|(flag, _)| flag.split([' ', '=']).next() == Some(name))
            .map(|(flag, help)| format!("{} {flag}  ({help})", self.program))
            .unwrap_or_else(|| format!("{} --help", self.program))
    }

    fn error(&self, name: &str, message: String) -> UsageError {
        UsageError {
            message,
            usage: self.usage_for(name),
        }
    }

    /// A string flag; `None` when absent. An empty value is an error, since it is never what a
    /// person meant.
    pub fn string(&mut self, name: &'static str) -> Result<Option<String>, UsageError> {
        match self.args.opt_value_from_str::<_, String>(name) {
            Ok(Some(v)) if v.is_empty() => {
                Err(self.error(name, format!("{name} has an empty value")))
            }
            Ok(v) => Ok(v),
            Err(e) => Err(self.error(name, describe(name, e))),
        }
    }

    /// A flag parsed with `FromStr`.
    pub fn parse<T>(&mut self, name: &'static str) -> Result<Option<T>, UsageError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.string(name)? {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|e| self.error(name, format!("{name}={v:?} is not valid: {e}"))),
        }
    }

    /// A duration flag such as `20s`, `500ms`, `2m` or a bare number of seconds.
    pub fn duration(
        &mut self,
        name: &'static str,
    ) -> Result<Option<std::time::Duration>, UsageError> {
        match self.string(name)? {
            None => Ok(None),
            Some(v) => parse_duration(&v).map(Some).ok_or_else(|| {
                self.error(
                    name,
                    format!("{name}={v:?} is not a duration like 20s, 500ms or 2m"),
                )
            }),
        }
    }

    /// A boolean switch (present or absent).
    pub fn switch(&mut self, name: &'static str) -> bool {
        self.args.contains(name)
    }

    /// The rest: positional words, and everything after `--`. Unknown flags are an error.
    pub fn finish(self) -> Result<Vec<String>, UsageError> {
        let program = self.program;
        let mut rest = Vec::new();
        let mut after_dashes = false;
        for a in self.args.finish() {
            let s = a.to_string_lossy().into_owned();
            if !after_dashes && s == "--" {
                after_dashes = true;
                continue;
            }
            if !after_dashes && s.starts_with('-') {
                return Err(UsageError {
                    message: format!("unknown flag {s}"),
                    usage: format!("{program} --help"),
                });
            }
            rest.push(s);
        }
        Ok(rest)
    }
}

fn describe(name: &str, e: pico_args::Error) -> String {
    match e {
        pico_args::Error::OptionWithoutAValue(_) => format!("{name} needs a value"),
        pico_args::Error::NonUtf8Argument => format!("{name} is not valid UTF-8"),
        other => format!("{name}: {other}"),
    }
}

/// The original's `--state.*` flags and `--serviceaccount.dir`: where the registration lives. Init
/// and the launcher take them (the proxy accepts and ignores the `--state.*` ones).
pub const STATE_FLAGS: [(&str, &str); 4] = [
    (
        "--state.baseDir DIR",
        "the SSM agent's Vault (default /var/lib/amazon/ssm/Vault)",
    ),
    (
        "--state.secretNamePrefix PREFIX",
        "state Secret name prefix (default eks-connector-state)",
    ),
    (
        "--state.secretNamespace NS",
        "state Secret namespace (default eks-connector)",
    ),
    (
        "--serviceaccount.dir DIR",
        "service-account token, ca.crt and namespace (default /var/run/secrets/kubernetes.io/serviceaccount)",
    ),
];

/// The values of [`STATE_FLAGS`], with the original's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFlags {
    pub base_dir: String,
    pub secret_prefix: String,
    pub secret_namespace: String,
    pub serviceaccount_dir: String,
}

impl StateFlags {
    pub fn parse(flags: &mut Flags) -> Result<StateFlags, UsageError> {
        Ok(StateFlags {
            base_dir: flags
                .string("--state.baseDir")?
                .unwrap_or_else(|| crate::state::AGENT_VAULT_DIR.into()),
            secret_prefix: flags
                .string("--state.secretNamePrefix")?
                .unwrap_or_else(|| "eks-connector-state".into()),
            secret_namespace: flags
                .string("--state.secretNamespace")?
                .unwrap_or_else(|| "eks-connector".into()),
            serviceaccount_dir: flags
                .string("--serviceaccount.dir")?
                .unwrap_or_else(|| crate::kube::DEFAULT_SERVICEACCOUNT_DIR.into()),
        })
    }
}

/// `20s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
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

    fn flags(args: &[&str]) -> Flags {
        match Flags::from_args(
            "prog",
            "about",
            &[
                ("--agent.region REGION", "AWS region"),
                ("--n N", "a number"),
            ],
            args.iter().map(OsString::from).collect(),
        ) {
            Start::Run(f) => f,
            Start::Print(_) => panic!("unexpected print"),
        }
    }

    #[test]
    fn both_flag_styles_parse() {
        let mut f = flags(&["--agent.region=eu-west-1"]);
        assert_eq!(
            f.string("--agent.region").unwrap().as_deref(),
            Some("eu-west-1")
        );
        let mut f = flags(&["--agent.region", "eu-west-1"]);
        assert_eq!(
            f.string("--agent.region").unwrap().as_deref(),
            Some("eu-west-1")
        );
    }

    #[test]
    fn errors_quote_the_flag_usage_line() {
        let mut f = flags(&["--n=abc"]);
        let e = f.parse::<u32>("--n").unwrap_err();
        assert!(e.to_string().contains("--n N"), "{e}");
        let mut f = flags(&["--agent.region"]);
        let e = f.string("--agent.region").unwrap_err();
        assert!(e.to_string().contains("needs a value"), "{e}");
        assert!(e.to_string().contains("AWS region"), "{e}");
    }

    #[test]
    fn unknown_flags_are_rejected_and_rest_is_kept() {
        let f = flags(&["--bogus"]);
        assert!(f.finish().unwrap_err().to_string().contains("--bogus"));
        let f = flags(&["--", "/bin/agent", "-x"]);
        assert_eq!(f.finish().unwrap(), vec!["/bin/agent", "-x"]);
    }

    #[test]
    fn help_and_version_print() {
        let s = Flags::from_args("prog", "about", &[], vec!["--version".into()]);
        assert!(matches!(s, Start::Print(v) if v.contains(crate::VERSION)));
    }

    #[test]
    fn state_flags_default_to_the_originals() {
        let lines = STATE_FLAGS.to_vec();
        let mut f = match Flags::from_args(
            "prog",
            "",
            &lines,
            vec!["--state.secretNamespace=ns".into()],
        ) {
            Start::Run(f) => f,
            Start::Print(_) => panic!("unexpected print"),
        };
        let s = StateFlags::parse(&mut f).unwrap();
        assert_eq!(s.secret_namespace, "ns");
        assert_eq!(s.secret_prefix, "eks-connector-state");
        assert_eq!(s.base_dir, "/var/lib/amazon/ssm/Vault");
        assert_eq!(
            s.serviceaccount_dir,
            "/var/run/secrets/kubernetes.io/serviceaccount"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("20s"),
            Some(std::time::Duration::from_secs(20))
        );
        assert_eq!(
            parse_duration("500ms"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("2m"),
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(parse_duration("7"), Some(std::time::Duration::from_secs(7)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal_from_pod_name(Some("eks-connector-1")).unwrap(), "1");
        assert!(ordinal_from_pod_name(Some("eks-connector")).is_err());
        assert!(ordinal_from_pod_name(Some("eks-connector-")).is_err());
        assert!(ordinal_from_pod_name(None).is_err());
    }
}
