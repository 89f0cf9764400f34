//! The client options file (TSM `dsm.opt`/`dsm.sys`), read with the `config`
//! crate: the TOML file, then `TANDEM_<KEY>` environment overrides.
//!
//! Which file: `--options`, else `$TANDEM_OPTIONS`, else `./tandem.toml`, else
//! `~/.config/tandem/tandem.toml` ([`resolve_path`], a pure function).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tandem_proto::ServerGuid;

/// Option keys, for environment overrides and for error messages.
pub const KEYS: &[&str] = &[
    "node_name",
    "server_name",
    "server_address",
    "server_fingerprint",
    "ca_file",
    "password",
    "password_file",
    "domain",
    "exclude",
    "exclude_dir",
    "include",
    "error_log",
    "error_log_max_mb",
    "state_dir",
    "connect_timeout_ms",
    "logon_retries",
    "busy_wait_seconds",
    "my_replication_server",
    "use_replication_failover",
    "force_failover",
    "changing_retries",
    "serialization",
    "schedule_commands",
    "vault_dir",
    "vault_timeout_seconds",
    "tier_wait_seconds",
];

/// A replication server stanza, written by the client from the primary's
/// logon reply (TSM REPLSERVERNAME with REPLTCPSERVERADDRESS, REPLSERVERGUID).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplServerEntry {
    /// Client-facing address of the replication server.
    pub address: String,
    /// Its replication GUID (dotted hex), shown and checked.
    #[serde(deserialize_with = "guid_from_text")]
    pub server_guid: ServerGuid,
    /// Its certificate fingerprint: checked in the TLS handshake before any
    /// credential is sent to it. A stanza without one cannot be failed over to.
    #[serde(default)]
    pub fingerprint: String,
}

/// Reads a GUID written as dotted hex; anything else is refused naming it.
fn guid_from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ServerGuid, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// A password, printed as `***` in debug output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The password text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The client's options, as read from the file and environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientOptions {
    /// Node to log on as (NODENAME).
    pub node_name: String,
    /// Name of the primary server, for messages (SERVERNAME).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// URL of the primary server, e.g. `https://backup.example.com:1500`.
    pub server_address: String,
    /// The primary's certificate fingerprint (SHA-256, `AB:CD:...`), pinned.
    #[serde(default)]
    pub server_fingerprint: Option<String>,
    /// Trust the primary's certificate when a CA in this PEM file issued it
    /// for the host in `server_address` (instead of `server_fingerprint`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The node's password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the node's password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Default paths of `incremental` (DOMAIN).
    #[serde(default)]
    pub domain: Vec<PathBuf>,
    /// Glob patterns not backed up unless `include` matches too (EXCLUDE).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Glob patterns of directories never entered (EXCLUDE.DIR).
    #[serde(default)]
    pub exclude_dir: Vec<String>,
    /// Glob patterns backed up even when `exclude` matches (INCLUDE).
    #[serde(default)]
    pub include: Vec<String>,
    /// Error log file (ERRORLOGNAME); default `dsierror.log` in `state_dir`.
    #[serde(default)]
    pub error_log: Option<PathBuf>,
    /// Size in MiB at which the error log is rotated; 0 = never (ERRORLOGMAX).
    #[serde(default)]
    pub error_log_max_mb: u64,
    /// Directory for client state (NRTABLEPATH).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Time the server gets to answer a logon, in milliseconds, across all tries.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Logon tries before the server counts as unreachable.
    #[serde(default = "default_logon_retries")]
    pub logon_retries: u32,
    /// How long a logon waits for a server that completed the TLS handshake
    /// (so proved who it is) but says it is busy or is slow to answer:
    /// such a server is up, and failing over from it would be wrong. 0
    /// waits for nothing beyond `connect_timeout_ms`.
    #[serde(default = "default_busy_wait_seconds")]
    pub busy_wait_seconds: u64,
    /// Fail over to the replication server when the primary is unreachable
    /// (USEREPLICATIONFAILOVER).
    #[serde(default = "default_true")]
    pub use_replication_failover: bool,
    /// Go straight to the replication server (FORCEFAILOVER; also `--force-failover`).
    #[serde(default)]
    pub force_failover: bool,
    /// The replication server of the primary (MYREPLICATIONSERVER), pushed at logon.
    #[serde(default)]
    pub my_replication_server: Option<String>,
    /// Replication server stanzas by name, pushed at logon.
    #[serde(default)]
    pub replication_servers: std::collections::BTreeMap<String, ReplServerEntry>,
    /// Reads of a file that changes while it is backed up, after the first
    /// (CHANGINGRETRIES).
    #[serde(default = "default_changing_retries")]
    pub changing_retries: u32,
    /// What to do with a file still changing after the retries
    /// (SERIALIZATION): `shared_static` skips it, `shared_dynamic` stores it
    /// marked "changed during backup".
    #[serde(default)]
    pub serialization: crate::backup::scan::Serialization,
    /// Whether `tandem schedule` runs commands the server defines: command
    /// schedules and pre/post commands (TSM SCHEDCMDDISABLED, the other way
    /// round). Off by default: a server, or whoever controls it, cannot run
    /// programs on the hosts it backs up unless each host allows it.
    #[serde(default)]
    pub schedule_commands: bool,
    /// The local vault (the second tier of seed 001, Cove's
    /// LocalSpeedVault): a directory on a local disk or a mounted share
    /// holding a Tandem store of this node's data. Backups go there when no
    /// server takes them, and restores come from it when no server answers.
    #[serde(default)]
    pub vault_dir: Option<PathBuf>,
    /// How long a command waits, trying again every few seconds, when no
    /// tier answers: no server takes the logon and no local vault can take
    /// the work (TSM COMMRESTARTDURATION, for the start of a command).
    /// 0, the default, gives up after the logon's own retries.
    #[serde(default)]
    pub tier_wait_seconds: u64,
    /// How long opening the local vault, or one call into it (a lookup or
    /// store of a backup's copy, a sync's lookup or batch of versions, any
    /// call to its service and each message of a listing or read), may take
    /// before the command goes on without it (TDM2125W): a network share
    /// that stopped answering must not hold up backups or restores.
    #[serde(default = "default_vault_timeout_seconds")]
    pub vault_timeout_seconds: u64,
}

/// The longest [`ClientOptions::vault_timeout_seconds`] accepted: an hour.
pub const MAX_VAULT_TIMEOUT_SECONDS: u64 = 3_600;

fn default_vault_timeout_seconds() -> u64 {
    30
}

/// The longest [`ClientOptions::tier_wait_seconds`] accepted: a day. A
/// longer wait is better left to the scheduler's next window.
pub const MAX_TIER_WAIT_SECONDS: u64 = 86_400;

fn default_changing_retries() -> u32 {
    4
}

fn default_true() -> bool {
    true
}

fn default_server_name() -> String {
    "TANDEM".into()
}
fn default_connect_timeout_ms() -> u64 {
    1500
}
fn default_logon_retries() -> u32 {
    3
}
fn default_busy_wait_seconds() -> u64 {
    60
}

/// The longest [`ClientOptions::busy_wait_seconds`] accepted: an hour.
pub const MAX_BUSY_WAIT_SECONDS: u64 = 3_600;

/// An options file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("options file {path}: {message}")]
pub struct OptionsError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

/// Picks the options file: the flag, then `$TANDEM_OPTIONS`, then `./tandem.toml`
/// if it exists, then the user config dir.
pub fn resolve_path(
    flag: Option<&Path>,
    env: Option<&str>,
    cwd_file_exists: bool,
    config_home: Option<&Path>,
) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        return PathBuf::from(e);
    }
    if cwd_file_exists {
        return PathBuf::from("tandem.toml");
    }
    match config_home {
        Some(dir) => dir.join("tandem").join("tandem.toml"),
        None => PathBuf::from("tandem.toml"),
    }
}

/// The user's config directory: `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
}

impl ClientOptions {
    /// Reads `path` with `env` overrides (`TANDEM_<KEY>` for the keys in
    /// [`KEYS`]; other `TANDEM_*` variables belong to other programs and are
    /// ignored) and checks the values.
    ///
    /// # Errors
    /// [`OptionsError`] naming the file and the key or line at fault.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Self, OptionsError> {
        let fail = |message: String| OptionsError {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            return Err(fail(
                "not found; create it (see README: options) or name it with --options".into(),
            ));
        }
        let overrides: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix("TANDEM_")
                    .is_some_and(|key| KEYS.contains(&key.to_ascii_lowercase().as_str()))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("TANDEM")
                    .source(Some(overrides))
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("domain")
                    .with_list_parse_key("exclude")
                    .with_list_parse_key("exclude_dir")
                    .with_list_parse_key("include"),
            )
            .build()
            // The file may hold the password: its lines are not quoted.
            .map_err(|e| fail(tandem_os::secret_text::without_quoted_lines(&e.to_string())))?;
        let mut options: ClientOptions = built.try_deserialize().map_err(|e| {
            let text = e.to_string();
            if text.contains("missing field") {
                fail(format!("{text}; add it to the file"))
            } else {
                fail(text)
            }
        })?;
        options.check().map_err(fail)?;
        if let Some(file) = &options.ca_file {
            options.ca_file = Some(relative_to(path, file));
        }
        if let Some(dir) = &options.vault_dir {
            options.vault_dir = Some(relative_to(path, dir));
        }
        if let Some(file) = &options.password_file {
            let file = relative_to(path, file);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| fail(format!("cannot read password_file {}: {e}", file.display())))?;
            let first = text.lines().next().unwrap_or("").to_string();
            options.password = Some(Secret::new(first));
            options.password_file = Some(file);
        }
        Ok(options)
    }

    /// The file that holds this client's password (`password_file`, or the
    /// options file at `path` when the password is written there rather than
    /// given in `TANDEM_PASSWORD`) with its permission bits, when users other
    /// than its owner may read it.
    pub fn readable_secret(
        &self,
        path: &Path,
        env: &HashMap<String, String>,
    ) -> Option<(PathBuf, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let holder = match &self.password_file {
            Some(file) => file.clone(),
            None if self.password.is_some() && !env.contains_key("TANDEM_PASSWORD") => {
                path.to_path_buf()
            }
            None => return None,
        };
        let mode = std::fs::metadata(&holder).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some((holder, mode))
    }

    fn check(&self) -> Result<(), String> {
        if self.node_name.trim().is_empty() {
            return Err("node_name is empty".into());
        }
        self.check_transport()?;
        if self.password.is_none() && self.password_file.is_none() {
            return Err("neither password nor password_file is set; add one".into());
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err("both password and password_file are set; keep one".into());
        }
        if self.logon_retries == 0 {
            return Err("logon_retries must be at least 1".into());
        }
        if self.connect_timeout_ms == 0 {
            return Err("connect_timeout_ms must be at least 1".into());
        }
        if self.busy_wait_seconds > MAX_BUSY_WAIT_SECONDS {
            return Err(format!(
                "busy_wait_seconds {} is more than an hour ({MAX_BUSY_WAIT_SECONDS}); a server busy for longer needs an operator",
                self.busy_wait_seconds
            ));
        }
        if !(1..=MAX_VAULT_TIMEOUT_SECONDS).contains(&self.vault_timeout_seconds) {
            return Err(format!(
                "vault_timeout_seconds {} is out of range: give 1 to {MAX_VAULT_TIMEOUT_SECONDS}",
                self.vault_timeout_seconds
            ));
        }
        if self.tier_wait_seconds > MAX_TIER_WAIT_SECONDS {
            return Err(format!(
                "tier_wait_seconds {} is more than a day ({MAX_TIER_WAIT_SECONDS}); leave longer waits to the next scheduled run",
                self.tier_wait_seconds
            ));
        }
        crate::backup::rules::Rules::new(&self.exclude_dir, &self.include, &self.exclude)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// `https://` needs a way to recognise the server; `http://` is only for
    /// a development server on loopback.
    fn check_transport(&self) -> Result<(), String> {
        let https = tandem_tls::parse_url_scheme(&self.server_address).map_err(|_| {
            format!(
                "server_address {:?} must be a URL such as https://backup.example.com:1500",
                self.server_address
            )
        })?;
        if !https && !tandem_tls::is_loopback_url(&self.server_address) {
            return Err(format!(
                "server_address {:?}: plaintext http:// is allowed only to a loopback address; use https:// with server_fingerprint",
                self.server_address
            ));
        }
        if !https && (self.server_fingerprint.is_some() || self.ca_file.is_some()) {
            return Err(format!(
                "server_address {:?} is plaintext http://, which cannot check server_fingerprint or ca_file; use https://",
                self.server_address
            ));
        }
        match (&self.server_fingerprint, &self.ca_file) {
            (Some(_), Some(_)) => {
                return Err("both server_fingerprint and ca_file are set; keep one".into());
            }
            (None, None) if https => {
                return Err(
                    "server_fingerprint is not set: the client trusts no server it cannot recognise. Copy the fingerprint the server prints at start (or `tandem-admin query status`, or DATA_DIR/fingerprint on the server) into server_fingerprint, or set ca_file"
                        .into(),
                );
            }
            (Some(fp), None) => {
                fp.parse::<tandem_tls::Fingerprint>()
                    .map_err(|e| format!("server_fingerprint: {e}"))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// How the primary is recognised; `None` for a plaintext loopback
    /// primary, which is not authenticated whatever the options pin.
    pub fn primary_trust(&self) -> Option<tandem_tls::Trust> {
        if !matches!(tandem_tls::parse_url_scheme(&self.server_address), Ok(true)) {
            return None;
        }
        if let Some(ca) = &self.ca_file {
            return Some(tandem_tls::Trust::CaFile(ca.clone()));
        }
        self.server_fingerprint
            .as_deref()
            .and_then(|fp| fp.parse().ok())
            .map(tandem_tls::Trust::Pinned)
    }

    /// The state directory: `state_dir`, else `$XDG_STATE_HOME/tandem`, else
    /// `~/.local/state/tandem`, else `.tandem` beside the working directory.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
            })
            .map_or_else(|| PathBuf::from(".tandem"), |d| d.join("tandem"))
    }

    /// The error log path.
    pub fn error_log_path(&self) -> PathBuf {
        self.error_log
            .clone()
            .unwrap_or_else(|| self.state_dir().join("dsierror.log"))
    }

    /// The password (set by [`ClientOptions::load`] from either key).
    pub fn password(&self) -> Secret {
        self.password.clone().unwrap_or_else(|| Secret::new(""))
    }
}

/// One effective option and where its value came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EffectiveOption {
    /// Key.
    pub key: &'static str,
    /// Value as text (passwords masked).
    pub value: String,
    /// `file`, `env TANDEM_<KEY>` or `default`.
    pub source: String,
}

impl ClientOptions {
    /// Every option with its value and source, for `tandem query options`.
    pub fn effective(&self, path: &Path, env: &HashMap<String, String>) -> Vec<EffectiveOption> {
        let in_file: Vec<String> = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
            .map(|doc| doc.iter().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default();
        let list = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let opt = |v: &Option<PathBuf>| {
            v.as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        };
        let values: Vec<(&'static str, String)> = vec![
            ("node_name", self.node_name.clone()),
            ("server_name", self.server_name.clone()),
            ("server_address", self.server_address.clone()),
            (
                "server_fingerprint",
                self.server_fingerprint.clone().unwrap_or_default(),
            ),
            ("ca_file", opt(&self.ca_file)),
            (
                "password",
                if self.password_file.is_none() {
                    "***".into()
                } else {
                    String::new()
                },
            ),
            ("password_file", opt(&self.password_file)),
            ("domain", list(&self.domain)),
            ("exclude", self.exclude.join(", ")),
            ("exclude_dir", self.exclude_dir.join(", ")),
            ("include", self.include.join(", ")),
            ("error_log", self.error_log_path().display().to_string()),
            ("error_log_max_mb", self.error_log_max_mb.to_string()),
            ("state_dir", self.state_dir().display().to_string()),
            ("connect_timeout_ms", self.connect_timeout_ms.to_string()),
            ("logon_retries", self.logon_retries.to_string()),
            ("busy_wait_seconds", self.busy_wait_seconds.to_string()),
            ("changing_retries", self.changing_retries.to_string()),
            ("schedule_commands", self.schedule_commands.to_string()),
            ("vault_dir", opt(&self.vault_dir)),
            (
                "vault_timeout_seconds",
                self.vault_timeout_seconds.to_string(),
            ),
            ("tier_wait_seconds", self.tier_wait_seconds.to_string()),
            (
                "serialization",
                match self.serialization {
                    crate::backup::scan::Serialization::SharedStatic => "shared_static",
                    crate::backup::scan::Serialization::SharedDynamic => "shared_dynamic",
                }
                .to_string(),
            ),
            (
                "my_replication_server",
                self.my_replication_server.clone().unwrap_or_default(),
            ),
            (
                "use_replication_failover",
                self.use_replication_failover.to_string(),
            ),
            ("force_failover", self.force_failover.to_string()),
        ];
        values
            .into_iter()
            .map(|(key, value)| {
                let env_key = format!("TANDEM_{}", key.to_ascii_uppercase());
                let source = if env.contains_key(&env_key) {
                    format!("env {env_key}")
                } else if key == "my_replication_server" && in_file.iter().any(|k| k == key) {
                    "pushed by server".to_string()
                } else if in_file.iter().any(|k| k == key) {
                    "file".to_string()
                } else {
                    "default".to_string()
                };
                EffectiveOption { key, value, source }
            })
            .chain(
                self.replication_servers
                    .iter()
                    .map(|(name, entry)| EffectiveOption {
                        key: "replication_servers",
                        value: format!("{name}: {} (guid {})", entry.address, entry.server_guid),
                        source: "pushed by server".to_string(),
                    }),
            )
            .collect()
    }

    /// The stored replication server of the primary, if the block is complete.
    pub fn replication_server(&self) -> Option<(&str, &ReplServerEntry)> {
        let name = self.my_replication_server.as_deref()?;
        self.replication_servers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(n, e)| (n.as_str(), e))
    }
}

/// A relative path in the options file is relative to the file's directory.
fn relative_to(options_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        options_file
            .parent()
            .map_or_else(|| p.to_path_buf(), |d| d.join(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("tandem.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = "node_name = \"alice\"\nserver_address = \"http://127.0.0.1:1500\"\npassword = \"secret123\"\n";

    #[test]
    fn path_resolution_order() {
        let flag = Path::new("/x/flag.toml");
        let home = Path::new("/home/u/.config");
        assert_eq!(
            resolve_path(Some(flag), Some("/e.toml"), true, Some(home)),
            flag
        );
        assert_eq!(
            resolve_path(None, Some("/e.toml"), true, Some(home)),
            Path::new("/e.toml")
        );
        assert_eq!(
            resolve_path(None, None, true, Some(home)),
            Path::new("tandem.toml")
        );
        assert_eq!(
            resolve_path(None, Some(""), false, Some(home)),
            Path::new("/home/u/.config/tandem/tandem.toml")
        );
    }

    #[test]
    fn reads_file_and_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), GOOD);
        let env = HashMap::from([
            ("TANDEM_LOGON_RETRIES".to_string(), "5".to_string()),
            ("TANDEM_DOMAIN".to_string(), "/a,/b".to_string()),
            ("TANDEM_OPTIONS".to_string(), "ignored".to_string()),
            ("TANDEM_SERVER_LISTEN".to_string(), "ignored".to_string()),
        ]);
        let o = ClientOptions::load(&p, &env).unwrap();
        assert_eq!(o.node_name, "alice");
        assert_eq!(o.logon_retries, 5);
        assert_eq!(o.domain, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(format!("{:?}", o.password), "Some(***)");
    }

    #[test]
    fn a_password_line_that_does_not_parse_is_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "node_name = \"alice\"\nserver_address = \"https://127.0.0.1:1500\"\npassword = \"hunter2\\q\"\n",
        );
        let err = ClientOptions::load(&p, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("{GOOD}nodename = \"x\"\n"));
        let err = ClientOptions::load(&p, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("nodename"), "{err}");
    }

    #[test]
    fn missing_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "server_address = \"http://127.0.0.1:1\"\npassword = \"p\"\n",
        );
        let err = ClientOptions::load(&p, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("node_name"), "{err}");
        let p = write(
            dir.path(),
            "node_name = \"a\"\nserver_address = \"127.0.0.1:1500\"\npassword = \"p\"\n",
        );
        let err = ClientOptions::load(&p, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("must be a URL"), "{err}");
        let p = write(dir.path(), &format!("{GOOD}exclude = [\"a[\"]\n"));
        let err = ClientOptions::load(&p, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("a["), "{err}");
        let p = write(
            dir.path(),
            &format!(
                "{GOOD}my_replication_server = \"DR\"\n[replication_servers.DR]\naddress = \"http://127.0.0.1:2\"\nserver_guid = \"91.0f.zz\"\n"
            ),
        );
        let err = ClientOptions::load(&p, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("91.0f.zz"), "{err}");
    }

    #[test]
    fn transport_needs_a_pin_and_plaintext_stays_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let fp = "AB:".repeat(31) + "AB";
        let base = "node_name = \"a\"\npassword = \"p\"\n";
        let cases: Vec<(String, Option<&str>)> = vec![
            (
                format!("server_address = \"http://127.0.0.1:1\"\nserver_fingerprint = \"{fp}\"\n"),
                Some("cannot check"),
            ),
            (
                "server_address = \"http://localhost:1500\"\n".into(),
                Some("only to a loopback"),
            ),
            (
                "server_address = \"https://backup.example.com:1500\"\n".into(),
                Some("server_fingerprint is not set"),
            ),
            (
                format!("server_address = \"https://b:1500\"\nserver_fingerprint = \"{fp}\"\n"),
                None,
            ),
            (
                "server_address = \"https://b:1500\"\nserver_fingerprint = \"AB:CD\"\n".into(),
                Some("AB:CD"),
            ),
            (
                "server_address = \"http://10.0.0.5:1500\"\n".into(),
                Some("only to a loopback"),
            ),
            ("server_address = \"http://127.0.0.1:1500\"\n".into(), None),
            (
                format!(
                    "server_address = \"https://b:1\"\nserver_fingerprint = \"{fp}\"\nca_file = \"ca.pem\"\n"
                ),
                Some("keep one"),
            ),
        ];
        for (lines, expected) in cases {
            let p = write(dir.path(), &format!("{base}{lines}"));
            match (ClientOptions::load(&p, &HashMap::new()), expected) {
                (Ok(o), None) => {
                    assert_eq!(o.primary_trust().is_some(), lines.contains("https"));
                }
                (Err(e), Some(text)) => assert!(e.to_string().contains(text), "{e}"),
                (got, _) => panic!("{lines}: {got:?}"),
            }
        }
    }

    #[test]
    fn malformed_toml_is_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "node_name = \"unterminated\n");
        let err = ClientOptions::load(&p, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("tandem.toml"), "{err}");
    }

    #[test]
    fn effective_options_name_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("{GOOD}domain = [\"/x\"]\n"));
        let env = HashMap::from([("TANDEM_LOGON_RETRIES".to_string(), "7".to_string())]);
        let o = ClientOptions::load(&p, &env).unwrap();
        let eff = o.effective(&p, &env);
        let find = |k: &str| eff.iter().find(|e| e.key == k).unwrap().clone();
        assert_eq!(find("node_name").source, "file");
        assert_eq!(find("domain").value, "/x");
        assert_eq!(find("logon_retries").source, "env TANDEM_LOGON_RETRIES");
        assert_eq!(find("logon_retries").value, "7");
        assert_eq!(find("connect_timeout_ms").source, "default");
        assert_eq!(find("password").value, "***");
        assert_eq!(find("use_replication_failover").value, "true");
        assert_eq!(find("force_failover").value, "false");
        // Every option a file or the environment may set is shown.
        for key in KEYS {
            assert!(eff.iter().any(|e| e.key == *key), "{key} missing");
        }
    }

    #[test]
    fn password_file_is_read_relative_to_the_options_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "from-file-pw\n").unwrap();
        let p = write(
            dir.path(),
            "node_name = \"a\"\nserver_address = \"http://127.0.0.1:1\"\npassword_file = \"pw\"\n",
        );
        let o = ClientOptions::load(&p, &HashMap::new()).unwrap();
        assert_eq!(o.password().expose(), "from-file-pw");
    }
}
