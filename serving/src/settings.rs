//! The one config edge: a daemon's settings struct, filled in layers —
//! its defaults, then the config file (`--config-file`, TOML/YAML/JSON with
//! the flags' names as keys), then `VIGIL_*` environment variables (the key
//! upper-cased, `-` as `_`, lists comma-separated), then flags — through
//! the `config` crate. Every unknown key and every bad value is reported,
//! each naming its key and where it came from, not just the first.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use config::{Config, File, FileFormat, Source, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    /// Where the value came from (`config file …`, `environment VIGIL_…`, `flag --…`).
    pub source: String,
    pub reason: String,
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", p.source, p.reason)?;
            } else {
                write!(f, "invalid {} ({}): {}", p.key, p.source, p.reason)?;
            }
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn one(key: &str, source: &str, reason: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigProblem { key: key.into(), source: source.into(), reason: reason.into() }])
    }
}

/// The environment variable for `key` (`node-name` → `VIGIL_NODE_NAME`).
pub fn env_name(key: &str) -> String {
    format!("VIGIL_{}", key.to_uppercase().replace('-', "_"))
}

/// Keys set on the command line, by flag name (kebab-case), as JSON values.
pub type FlagLayer = serde_json::Map<String, serde_json::Value>;

/// The flags a user actually gave (on the command line, or through a
/// variable clap reads itself such as `NODE_NAME`), with their parsed
/// values, keyed as the settings are. Flags that are not settings (marked
/// `#[serde(skip)]`, like `--config-file`) are left out.
pub fn flags_given<F: Serialize>(parsed: &F, matches: &clap::ArgMatches) -> FlagLayer {
    use clap::parser::ValueSource;
    let Ok(serde_json::Value::Object(values)) = serde_json::to_value(parsed) else { return FlagLayer::new() };
    matches
        .ids()
        .filter(|id| {
            matches!(matches.value_source(id.as_str()), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
        })
        .filter_map(|id| {
            let key = id.as_str().replace('_', "-");
            values.get(&key).map(|v| (key, v.clone()))
        })
        .collect()
}

/// A parsed command line: the flags' values, and which of them the user gave.
pub struct CommandLine<F> {
    pub flags: F,
    pub given: FlagLayer,
}

impl<F: clap::Parser + Serialize> CommandLine<F> {
    /// Parses `args` (clap prints usage and exits on a malformed command line).
    pub fn parse_from<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = F::command().get_matches_from(args);
        let flags = match F::from_arg_matches(&matches) {
            Ok(f) => f,
            Err(e) => e.exit(),
        };
        let given = flags_given(&flags, &matches);
        CommandLine { flags, given }
    }

    pub fn parse() -> Self {
        Self::parse_from(std::env::args_os())
    }
}

/// Checks a config file's keys and values for settings `S`, starting nothing.
pub fn check_file<S>(path: &Path) -> Result<(), ConfigErrors>
where
    S: Serialize + DeserializeOwned + Default,
{
    layered::<S>(Some(path), |_| None, &FlagLayer::new()).map(|_| ())
}

/// Fills `S` from its defaults, `file`, the environment (`env` looks a
/// variable up, so tests need not touch the process's) and `flags`.
pub fn layered<S>(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
    flags: &FlagLayer,
) -> Result<S, ConfigErrors>
where
    S: Serialize + DeserializeOwned + Default,
{
    let mut problems = Vec::new();
    let defaults = S::default();
    let known: Vec<(String, bool)> = match serde_json::to_value(&defaults) {
        Ok(serde_json::Value::Object(m)) => m.into_iter().map(|(k, v)| (k, v.is_array())).collect(),
        _ => Vec::new(),
    };
    let is_known = |k: &str| known.iter().any(|(name, _)| name == k);
    // Each key's value and where it came from; later layers win.
    let mut given: BTreeMap<String, (Value, String)> = BTreeMap::new();

    if let Some(path) = file {
        let source = format!("config file {}", path.display());
        if !path.exists() {
            return Err(ConfigErrors::one("", &source, "no such file"));
        }
        match Config::builder().add_source(File::from(path)).build().and_then(|c| c.collect()) {
            Ok(map) => {
                for (k, v) in map.into_iter().collect::<BTreeMap<_, _>>() {
                    if is_known(&k) {
                        given.insert(k, (v, source.clone()));
                    } else {
                        problems.push(ConfigProblem { key: k, source: source.clone(), reason: "unknown key".into() });
                    }
                }
            }
            Err(e) => return Err(ConfigErrors::one("", &source, e.to_string())),
        }
    }
    for (k, is_list) in &known {
        let var = env_name(k);
        if let Some(text) = env(&var) {
            let value = if *is_list {
                Value::from(text.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect::<Vec<_>>())
            } else {
                Value::from(text)
            };
            given.insert(k.clone(), (value, format!("environment {var}")));
        }
    }
    if !flags.is_empty() {
        let text = serde_json::Value::Object(flags.clone()).to_string();
        match Config::builder().add_source(File::from_str(&text, FileFormat::Json)).build().and_then(|c| c.collect()) {
            Ok(map) => {
                for (k, v) in map {
                    given.insert(k.clone(), (v, format!("flag --{k}")));
                }
            }
            Err(e) => {
                problems.push(ConfigProblem { key: String::new(), source: "flags".into(), reason: e.to_string() })
            }
        }
    }
    // Each value on its own over the defaults, so every bad one is named.
    let base = || Config::builder().add_source(Config::try_from(&defaults).unwrap_or_default());
    for (k, (v, source)) in &given {
        let checked =
            base().set_override(k.as_str(), v.clone()).and_then(|b| b.build()).and_then(|c| c.try_deserialize::<S>());
        if let Err(e) = checked {
            problems.push(ConfigProblem { key: k.clone(), source: source.clone(), reason: reason(&e) });
        }
    }
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    let mut all = base();
    for (k, (v, _)) in given {
        all = all.set_override(k.as_str(), v).map_err(|e| ConfigErrors::one(&k, "settings", e.to_string()))?;
    }
    all.build().and_then(|c| c.try_deserialize::<S>()).map_err(|e| ConfigErrors::one("", "settings", e.to_string()))
}

/// The config crate's message without its trailing `for key …` (the key is
/// named separately).
fn reason(e: &config::ConfigError) -> String {
    let text = e.to_string();
    match text.find(" for key ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
    struct Demo {
        name: String,
        size: usize,
        on: bool,
        peers: Vec<String>,
        path: Option<String>,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo { name: "d".into(), size: 7, on: false, peers: vec![], path: None }
        }
    }

    fn file(text: &str, ext: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vigil-settings-{}-{n}.{ext}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn layers_in_order_defaults_file_environment_flags() {
        let none = |_: &str| None;
        let d: Demo = layered(None, none, &FlagLayer::new()).unwrap();
        assert_eq!(d, Demo::default());
        let f = file("name = \"file\"\nsize = 3\npeers = [\"a\"]\n", "toml");
        let d: Demo = layered(Some(&f), none, &FlagLayer::new()).unwrap();
        assert_eq!((d.name.as_str(), d.size, d.peers.clone()), ("file", 3, vec!["a".to_owned()]));
        let env = |v: &str| match v {
            "VIGIL_SIZE" => Some("4".to_owned()),
            "VIGIL_PEERS" => Some("x, y".to_owned()),
            "VIGIL_ON" => Some("true".to_owned()),
            _ => None,
        };
        let d: Demo = layered(Some(&f), env, &FlagLayer::new()).unwrap();
        assert_eq!((d.size, d.on, d.peers.clone()), (4, true, vec!["x".to_owned(), "y".to_owned()]));
        let mut flags = FlagLayer::new();
        flags.insert("size".into(), 5.into());
        flags.insert("path".into(), "/p".into());
        let d: Demo = layered(Some(&f), env, &flags).unwrap();
        assert_eq!((d.name.as_str(), d.size, d.path.as_deref()), ("file", 5, Some("/p")));
    }

    #[test]
    fn every_bad_key_is_reported_with_its_source() {
        let f = file("nmae: x\nsize: lots\nsizee: 2\n", "yaml");
        let env = |v: &str| (v == "VIGIL_ON").then(|| "maybe".to_owned());
        let e = layered::<Demo>(Some(&f), env, &FlagLayer::new()).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["nmae", "sizee", "on", "size"], "{e}");
        let text = e.to_string();
        assert!(text.contains("invalid nmae (config file "), "{text}");
        assert!(text.contains("invalid on (environment VIGIL_ON)"), "{text}");
        assert!(text.contains("invalid size (config file "), "{text}");
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = layered::<Demo>(Some(Path::new("/nonexistent.toml")), |_| None, &FlagLayer::new()).unwrap_err();
        assert_eq!(e.to_string(), "config file /nonexistent.toml: no such file");
    }

    #[test]
    fn only_given_flags_are_a_layer() {
        use clap::{CommandFactory, FromArgMatches, Parser};
        #[derive(Parser, Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct F {
            #[arg(long, default_value = "d")]
            name: String,
            #[arg(long)]
            on: bool,
            #[arg(long)]
            peers: Vec<String>,
            #[arg(long)]
            #[serde(skip)]
            config_file: Option<String>,
        }
        let matches = F::command().get_matches_from(["f", "--on", "--config-file", "x"]);
        let f = F::from_arg_matches(&matches).unwrap();
        let layer = flags_given(&f, &matches);
        assert_eq!(layer.keys().collect::<Vec<_>>(), vec!["on"], "defaults and non-settings are not given");
    }
}
