//! The settings of `multiclient serve` from a TOML file and the environment, and the
//! duration syntax its flags take.
//!
//! The keys are not a second list kept by hand: they are read from clap's own
//! description of the `serve` command, so every flag is a key (`--max-conns` is
//! `max-conns`, and `MULTICLIENT_MAX_CONNS` in the environment) and appears in
//! [`example`] the moment the flag exists. A file or an environment variable becomes
//! the same argument tokens the flag would have been, and clap parses the whole as one
//! command line: one parser, one set of checks, one error message per bad value. The
//! order is flag over environment over file over default ([`layered`]).
//!
//! Every value is checked where it was written: an unknown key, a value of the wrong
//! shape or one clap refuses is reported with its line, all of them at once
//! (`multiclient check-config`), never ignored.

use std::ffi::OsString;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The prefix of the environment variables that set a `serve` flag:
/// `MULTICLIENT_MAX_CONNS` for `--max-conns`.
pub const ENV_PREFIX: &str = "MULTICLIENT_";

/// Arguments of `serve` that are not settings: the file itself, and clap's own.
const NOT_SETTINGS: [&str; 3] = ["config", "help", "version"];

/// Why a duration was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number, or a unit other than those documented.
    #[error("not a duration: {input:?} (use ms, s, m or h, as in 500ms or 5m; a bare number is seconds): {reason}")]
    Invalid {
        /// What was given.
        input: String,
        /// What the parser objected to.
        reason: String,
    },
    /// A number of seconds that is negative or too large.
    #[error("{input:?}: {reason}")]
    OutOfRange {
        /// What was given.
        input: String,
        /// Why it cannot be a duration.
        reason: String,
    },
}

/// A duration as the flags take it: `500ms`, `30s`, `5m`, `1h`, combinations such as
/// `1m30s`, and a bare number (`300`, `0.5`) as seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        let secs: f64 =
            s.parse()
                .map_err(|e: std::num::ParseFloatError| DurationError::Invalid {
                    input: s.into(),
                    reason: e.to_string(),
                })?;
        return Duration::try_from_secs_f64(secs).map_err(|e| DurationError::OutOfRange {
            input: s.into(),
            reason: e.to_string(),
        });
    }
    humantime::parse_duration(s).map_err(|e| DurationError::Invalid {
        input: s.into(),
        reason: e.to_string(),
    })
}

/// One problem in a config file or in the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not TOML.
    #[error("{message}")]
    Syntax {
        /// Where, 1-based.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A key that is no setting of `serve`.
    #[error("unknown key `{key}` (`multiclient config-example` lists every setting)")]
    UnknownKey {
        /// Where, 1-based.
        line: usize,
        /// The key as written.
        key: String,
    },
    /// A value of the wrong TOML type for its setting (a table, a list for a single
    /// value, a string for a switch).
    #[error("`{key}`: {message}")]
    WrongType {
        /// Where, 1-based (0 for the environment).
        line: usize,
        /// The key (or the environment variable).
        key: String,
        /// What was expected.
        message: String,
    },
    /// A value the flag itself refuses (`max-conns = "many"`).
    #[error("`{key}`: {message}")]
    BadValue {
        /// Where, 1-based (0 for the environment).
        line: usize,
        /// The key (or the environment variable).
        key: String,
        /// The flag's own error.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the problem is on; 0 when it came from the environment.
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Syntax { line, .. }
            | ConfigError::UnknownKey { line, .. }
            | ConfigError::WrongType { line, .. }
            | ConfigError::BadValue { line, .. } => *line,
        }
    }
}

/// Every problem found in one source, named by `origin` (a path, or `environment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file's path, `-` for standard input, or `environment`.
    pub origin: String,
    /// The problems, in the order they appear.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.line() {
                0 => write!(f, "{}: {e}", self.origin)?,
                line => write!(f, "{}:{line}: {e}", self.origin)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The settings one source (a file, the environment) gives, as argument tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// For each argument id set, the tokens that set it (`--max-conns=5`).
    tokens: Vec<(String, Vec<OsString>)>,
}

impl Settings {
    /// Whether the argument with this id is set here.
    pub fn contains(&self, id: &str) -> bool {
        self.tokens.iter().any(|(i, _)| i == id)
    }

    /// The tokens that set argument `id`, if this source sets it.
    pub fn get(&self, id: &str) -> Option<&[OsString]> {
        self.tokens
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, t)| t.as_slice())
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// The arguments of `cmd` that are settings: every one with a long name, except
/// `--config`, `--help` and `--version`.
pub fn settings(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some() && !NOT_SETTINGS.contains(&a.get_id().as_str()))
}

/// The environment variable that sets `arg`: its own if clap declares one
/// (`MULTICLIENT_API_KEY`), else `MULTICLIENT_` and the long name in capitals.
pub fn env_name(arg: &Arg) -> String {
    if let Some(own) = arg.get_env() {
        return own.to_string_lossy().into_owned();
    }
    let long = arg.get_long().unwrap_or(arg.get_id().as_str());
    format!("{ENV_PREFIX}{}", long.to_uppercase().replace('-', "_"))
}

/// How a setting takes its value, from its clap action.
enum Shape {
    /// A switch: `true` sets it, `false` leaves it unset.
    Switch,
    /// A count (`-v -v`): a non-negative integer.
    Count,
    /// A repeatable value: a list (or one value).
    List,
    /// One value.
    One,
}

fn shape(arg: &Arg) -> Shape {
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => Shape::Switch,
        ArgAction::Count => Shape::Count,
        ArgAction::Append => Shape::List,
        _ => Shape::One,
    }
}

fn line_of(text: &str, span: Option<Range<usize>>) -> usize {
    let at = span.map_or(0, |s| s.start.min(text.len()));
    text[..at].bytes().filter(|&b| b == b'\n').count() + 1
}

/// A TOML scalar as the text a flag takes; `None` for arrays, tables and dates.
fn scalar(v: &toml_edit::Value) -> Option<String> {
    use toml_edit::Value;
    match v {
        Value::String(s) => Some(s.value().clone()),
        Value::Integer(i) => Some(i.value().to_string()),
        Value::Float(x) => Some(x.value().to_string()),
        Value::Boolean(b) => Some(b.value().to_string()),
        _ => None,
    }
}

/// Checks tokens for one argument with clap itself, so a value is refused here
/// exactly as the flag would refuse it.
fn check_tokens(cmd: &Command, tokens: &[OsString]) -> Result<(), String> {
    cmd.clone()
        .no_binary_name(true)
        .try_get_matches_from(tokens)
        .map(drop)
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        })
}

/// Tokens for `arg` from the text values a source gave.
fn tokens_for(arg: &Arg, values: &[String]) -> Vec<OsString> {
    let long = arg.get_long().unwrap_or_default();
    values
        .iter()
        .map(|v| OsString::from(format!("--{long}={v}")))
        .collect()
}

/// Reads a config file's text against the settings of `cmd` (the `serve` command).
///
/// Every problem is reported, each with its line; nothing is ignored.
pub fn parse_file(cmd: &Command, origin: &str, text: &str) -> Result<Settings, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        origin: origin.to_string(),
        errors,
    };
    let doc = toml_edit::Document::parse(text).map_err(|e| {
        fail(vec![ConfigError::Syntax {
            line: line_of(text, e.span()),
            message: e.message().trim().to_string(),
        }])
    })?;
    let mut errors = Vec::new();
    let mut out = Settings::default();
    let table = doc.as_table();
    for (key, item) in table.iter() {
        let key_span = table.key(key).and_then(|k| k.span());
        let line = line_of(text, key_span);
        let Some(arg) = settings(cmd).find(|a| a.get_long() == Some(key)) else {
            errors.push(ConfigError::UnknownKey {
                line,
                key: key.to_string(),
            });
            continue;
        };
        let wrong = |message: &str| ConfigError::WrongType {
            line,
            key: key.to_string(),
            message: message.to_string(),
        };
        let Some(value) = item.as_value() else {
            errors.push(wrong("a setting, not a table"));
            continue;
        };
        let tokens = match shape(arg) {
            Shape::Switch => match value.as_bool() {
                Some(true) => vec![OsString::from(format!("--{key}"))],
                Some(false) => Vec::new(),
                None => {
                    errors.push(wrong("expected true or false"));
                    continue;
                }
            },
            Shape::Count => match value.as_integer().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => vec![OsString::from(format!("--{key}")); n],
                None => {
                    errors.push(wrong("expected a count (0, 1, 2, ...)"));
                    continue;
                }
            },
            Shape::List => {
                let items: Option<Vec<String>> = match value.as_array() {
                    Some(list) => list.iter().map(scalar).collect(),
                    None => scalar(value).map(|v| vec![v]),
                };
                match items {
                    Some(items) => tokens_for(arg, &items),
                    None => {
                        errors.push(wrong("expected a list of values"));
                        continue;
                    }
                }
            }
            Shape::One => match scalar(value) {
                Some(v) => tokens_for(arg, &[v]),
                None => {
                    errors.push(wrong("expected one value (a string, number or boolean)"));
                    continue;
                }
            },
        };
        if let Err(message) = check_tokens(cmd, &tokens) {
            errors.push(ConfigError::BadValue {
                line,
                key: key.to_string(),
                message,
            });
            continue;
        }
        out.tokens.push((arg.get_id().to_string(), tokens));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(fail(errors))
    }
}

/// Reads the `MULTICLIENT_<SETTING>` variables that `var` returns, for the settings
/// of `cmd` that clap does not read from the environment itself.
///
/// A switch takes `true`/`false` (or `1`/`0`), a count a number, and a repeatable
/// setting its values separated by spaces (`MULTICLIENT_SERVICE="ack greet=127.0.0.1:7002"`).
pub fn parse_env(
    cmd: &Command,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigErrors> {
    let mut errors = Vec::new();
    let mut out = Settings::default();
    for arg in settings(cmd).filter(|a| a.get_env().is_none()) {
        let name = env_name(arg);
        let Some(value) = var(&name) else { continue };
        let long = arg.get_long().unwrap_or_default();
        let wrong = |message: &str| ConfigError::WrongType {
            line: 0,
            key: name.clone(),
            message: message.to_string(),
        };
        let tokens = match shape(arg) {
            Shape::Switch => match value.trim() {
                "true" | "1" => vec![OsString::from(format!("--{long}"))],
                "false" | "0" | "" => Vec::new(),
                _ => {
                    errors.push(wrong("expected true or false"));
                    continue;
                }
            },
            Shape::Count => match value.trim().parse::<usize>() {
                Ok(n) => vec![OsString::from(format!("--{long}")); n],
                Err(_) => {
                    errors.push(wrong("expected a count (0, 1, 2, ...)"));
                    continue;
                }
            },
            Shape::List => {
                let items: Vec<String> = value.split_whitespace().map(String::from).collect();
                tokens_for(arg, &items)
            }
            Shape::One => tokens_for(arg, std::slice::from_ref(&value)),
        };
        if let Err(message) = check_tokens(cmd, &tokens) {
            errors.push(ConfigError::BadValue {
                line: 0,
                key: name,
                message,
            });
            continue;
        }
        out.tokens.push((arg.get_id().to_string(), tokens));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors {
            origin: "environment".into(),
            errors,
        })
    }
}

/// The tokens to put before the command line's own so that each setting comes from
/// the first of: the command line (`matches`, parsed from it), a variable clap reads
/// itself, `sources` in order (the environment, then the file), the default.
pub fn layered(cmd: &Command, matches: &ArgMatches, sources: &[&Settings]) -> Vec<OsString> {
    let mut out = Vec::new();
    for arg in settings(cmd) {
        let id = arg.get_id().as_str();
        let given = matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        if let Some(tokens) = sources.iter().find_map(|s| s.get(id)) {
            out.extend_from_slice(tokens);
        }
    }
    out
}

/// Every setting's value in `matches` (the whole command line, once layered), by key,
/// as text: what a reload compares to tell what changed. A setting with no value is
/// `none`; a list is its values joined by `, `.
pub fn effective(
    cmd: &Command,
    matches: &ArgMatches,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for arg in settings(cmd) {
        let id = arg.get_id().as_str();
        let value = match shape(arg) {
            Shape::Switch => matches.get_flag(id).to_string(),
            Shape::Count => matches.get_count(id).to_string(),
            Shape::List | Shape::One => match matches.get_raw(id) {
                Some(values) => values
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
                None => "none".to_string(),
            },
        };
        let key = arg.get_long().unwrap_or(id).to_string();
        out.insert(key, value);
    }
    out
}

/// Wraps `text` into `# ` comment lines of about 88 columns.
fn comment(out: &mut String, text: &str) {
    for para in text.lines() {
        let mut line = String::from("#");
        for word in para.split_whitespace() {
            if line.len() + 1 + word.len() > 88 && line.len() > 1 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// A default as TOML: a number or a boolean bare, anything else quoted.
fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
        v.to_string()
    } else {
        toml_edit::Value::from(v).to_string().trim().to_string()
    }
}

/// A complete config file for `cmd` (the `serve` command): every setting with its
/// help as a comment, its environment variable, and its default. A setting with a
/// default is written out (so the file states what the server does); one without
/// (`workers`, `redis`) is left commented.
pub fn example(cmd: &Command) -> String {
    let mut out = String::new();
    comment(
        &mut out,
        "multiclient serve: a config file (`multiclient serve --config FILE`). Every key is \
         a flag of `multiclient serve` without its dashes; MULTICLIENT_<KEY> in the \
         environment overrides the file, and a flag overrides both. An unknown key is an \
         error. Durations take ms, s, m or h; a bare number is seconds.",
    );
    for arg in settings(cmd) {
        let long = arg.get_long().unwrap_or_default();
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        // clap drops the final period of a one-line help; the file reads as prose.
        let help = match help.trim_end().chars().last() {
            Some('.' | '!' | '?' | ')') | None => help,
            Some(_) => format!("{}.", help.trim_end()),
        };
        comment(&mut out, &help);
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|p| !p.is_hide_set())
            .map(|p| p.get_name().to_string())
            .collect();
        if !possible.is_empty() && !matches!(shape(arg), Shape::Switch) {
            comment(&mut out, &format!("One of: {}.", possible.join(", ")));
        }
        comment(&mut out, &format!("Environment: {}.", env_name(arg)));
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let line = match shape(arg) {
            Shape::Switch => Some(format!("{long} = false")),
            Shape::Count => Some(format!("{long} = 0")),
            Shape::List => Some(format!(
                "{long} = [{}]",
                defaults
                    .iter()
                    .map(|d| toml_value(d))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Shape::One => defaults
                .first()
                .map(|d| format!("{long} = {}", toml_value(d))),
        };
        match line {
            Some(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            None => {
                let value = arg
                    .get_value_names()
                    .and_then(|n| n.first())
                    .map_or_else(|| "VALUE".to_string(), |n| n.to_string());
                out.push_str(&format!("# {long} = <{value}>   (no default)\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> Command {
        Command::new("serve")
            .arg(
                Arg::new("service")
                    .long("service")
                    .action(ArgAction::Append)
                    .help("A service."),
            )
            .arg(
                Arg::new("max_conns")
                    .long("max-conns")
                    .value_parser(clap::value_parser!(usize))
                    .default_value("10000")
                    .help("Connections."),
            )
            .arg(
                Arg::new("idle_timeout")
                    .long("idle-timeout")
                    .value_parser(parse_duration)
                    .default_value("300s"),
            )
            .arg(Arg::new("echo").long("echo").action(ArgAction::SetTrue))
            .arg(
                Arg::new("verbose")
                    .short('v')
                    .long("verbose")
                    .action(ArgAction::Count),
            )
            .arg(Arg::new("redis").long("redis").value_name("URL"))
            .arg(Arg::new("config").long("config"))
    }

    fn merged(file: &str, env: &[(&str, &str)], flags: &[&str]) -> ArgMatches {
        let cmd = cmd();
        let file = parse_file(&cmd, "f.toml", file).unwrap();
        let env = parse_env(&cmd, |k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        let m = cmd
            .clone()
            .no_binary_name(true)
            .try_get_matches_from(flags)
            .unwrap();
        let mut tokens = layered(&cmd, &m, &[&env, &file]);
        tokens.extend(flags.iter().map(OsString::from));
        cmd.no_binary_name(true)
            .try_get_matches_from(tokens)
            .unwrap()
    }

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration(" 1m30s ").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn a_bad_duration_is_an_error_that_says_what_is_accepted() {
        for bad in ["", "soon", "5 parsecs", "1.2.3", "-5s", "5x"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(
                e.to_string().contains(&format!("{:?}", bad.trim())),
                "{bad}: {e}"
            );
        }
        assert!(matches!(
            parse_duration("1e400"),
            Err(DurationError::Invalid { .. })
        ));
    }

    #[test]
    fn file_values_become_the_flags_they_name() {
        let m = merged(
            "service = [\"ack\", \"greet=127.0.0.1:0\"]\nmax-conns = 7\necho = true\nverbose = 2\nidle-timeout = \"5m\"\n",
            &[],
            &[],
        );
        let services: Vec<&String> = m.get_many("service").unwrap().collect();
        assert_eq!(services, ["ack", "greet=127.0.0.1:0"]);
        assert_eq!(m.get_one::<usize>("max_conns"), Some(&7));
        assert!(m.get_flag("echo"));
        assert_eq!(m.get_count("verbose"), 2);
        assert_eq!(
            m.get_one::<Duration>("idle_timeout"),
            Some(&Duration::from_secs(300))
        );
    }

    #[test]
    fn environment_overrides_the_file_and_a_flag_overrides_both() {
        let file = "max-conns = 7\nservice = [\"ack\"]\nredis = \"redis://file\"\n";
        let env = [
            ("MULTICLIENT_MAX_CONNS", "8"),
            ("MULTICLIENT_SERVICE", "greet hello"),
        ];
        let m = merged(file, &env, &["--max-conns", "9"]);
        assert_eq!(m.get_one::<usize>("max_conns"), Some(&9));
        let services: Vec<&String> = m.get_many("service").unwrap().collect();
        assert_eq!(
            services,
            ["greet", "hello"],
            "a list is replaced, not extended"
        );
        assert_eq!(
            m.get_one::<String>("redis").map(String::as_str),
            Some("redis://file")
        );
        let m = merged(file, &env, &[]);
        assert_eq!(m.get_one::<usize>("max_conns"), Some(&8));
        let m = merged(file, &[], &["--service", "chat"]);
        let services: Vec<&String> = m.get_many("service").unwrap().collect();
        assert_eq!(services, ["chat"]);
    }

    #[test]
    fn every_problem_in_a_file_is_reported_with_its_line() {
        let text = "# a comment\nmax-conns = \"many\"\nmax-cons = 5\necho = \"yes\"\n[tls]\ncert = \"x\"\n";
        let e = parse_file(&cmd(), "f.toml", text).unwrap_err();
        let lines: Vec<usize> = e.errors.iter().map(ConfigError::line).collect();
        assert_eq!(lines, [2, 3, 4, 5], "{e}");
        assert!(matches!(e.errors[0], ConfigError::BadValue { .. }));
        assert!(matches!(&e.errors[1], ConfigError::UnknownKey { key, .. } if key == "max-cons"));
        assert!(matches!(e.errors[2], ConfigError::WrongType { .. }));
        let shown = e.to_string();
        assert!(
            shown.contains("f.toml:3: unknown key `max-cons`"),
            "{shown}"
        );
        assert!(
            shown.contains("f.toml:2: `max-conns`: invalid value 'many'"),
            "{shown}"
        );
    }

    #[test]
    fn a_file_that_is_not_toml_is_an_error_with_its_line() {
        let e = parse_file(&cmd(), "f.toml", "echo = true\nmax-conns = = 5\n").unwrap_err();
        assert!(
            matches!(e.errors[..], [ConfigError::Syntax { line: 2, .. }]),
            "{e}"
        );
    }

    #[test]
    fn the_config_file_itself_is_not_a_setting() {
        let e = parse_file(&cmd(), "f.toml", "config = \"other.toml\"\n").unwrap_err();
        assert!(matches!(
            e.errors[..],
            [ConfigError::UnknownKey { line: 1, .. }]
        ));
    }

    #[test]
    fn a_bad_environment_value_names_its_variable() {
        let e = parse_env(&cmd(), |k| {
            (k == "MULTICLIENT_IDLE_TIMEOUT").then(|| "soon".into())
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("environment: `MULTICLIENT_IDLE_TIMEOUT`"),
            "{e}"
        );
    }

    #[test]
    fn the_example_names_every_setting_and_is_accepted() {
        let cmd = cmd();
        let text = example(&cmd);
        for arg in settings(&cmd) {
            let long = arg.get_long().unwrap();
            assert!(
                text.lines().any(|l| l
                    .trim_start_matches("# ")
                    .starts_with(&format!("{long} = "))),
                "{long} missing from\n{text}"
            );
        }
        assert!(text.contains("max-conns = 10000\n"), "{text}");
        assert!(text.contains("idle-timeout = \"300s\"\n"), "{text}");
        assert!(text.contains("# redis = <URL>"), "{text}");
        assert!(!text.contains("config ="), "{text}");
        parse_file(&cmd, "example", &text).unwrap();
    }
}
