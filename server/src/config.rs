//! Server configuration: embedded defaults < TOML file < `TANDEM_SERVER_*`
//! environment < command-line flags, layered with the `config` crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::logging::{LogFormat, LogRotation, LogSettings};

/// Everything `tandem-server` needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the catalog, containers, GUID and admin token live.
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (see `listen.addr`).
    pub listen: SocketAddr,
    /// Server name, upper-case (TSM server names are).
    pub name: String,
    /// Hours between automatic expiration runs; 0 turns them off.
    #[serde(default = "default_expire_interval_hours")]
    pub expire_interval_hours: u64,
    /// Minutes between scheduled replication of every enabled node; 0 = on demand only.
    #[serde(default)]
    pub replication_interval_minutes: u64,
    /// Server-wide policy for nodes without values of their own (`[policy]`).
    #[serde(default)]
    pub policy: crate::model::Policy,
    /// The operator's own certificate chain (PEM, leaf first); with
    /// `tls_key`. Unset: a self-signed one is made in `DATA_DIR/tls/`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Serve plaintext HTTP/2 instead of TLS: development only, and only on
    /// a loopback address (`--insecure-plaintext`).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Accept a `name` other than the one the data dir's catalog holds, and
    /// keep the new one (`--rename`).
    #[serde(default)]
    pub rename: bool,
    /// Failed logons in a row after which a node is locked (TSM
    /// INVALIDPWLIMIT); 0 never locks.
    #[serde(default = "default_invalid_password_limit")]
    pub invalid_password_limit: u32,
    /// How far in the future (seconds) the times a client's local vault
    /// sends may lie: they come from the client's clock.
    #[serde(default = "default_vault_clock_skew_seconds")]
    pub vault_clock_skew_seconds: u64,
    /// Seconds the server waits for the next message of an upload stream
    /// before it ends the stream (TSM COMMTIMEOUT).
    #[serde(default = "default_comm_timeout_seconds")]
    pub comm_timeout_seconds: u64,
    /// Seconds a connection may stay open with no call in progress before
    /// the server closes it (TSM IDLETIMEOUT, in seconds here). Clients open
    /// a new one when they next call.
    #[serde(default = "default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// Connections open at once; one more is closed at once (TSM
    /// MAXSESSIONS, counted in connections). One address may hold at most
    /// 128 of them.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Bits of an IPv6 address that count as one caller for every
    /// per-address limit (connections, handshakes, unproven request bodies,
    /// the metrics endpoint): 64 by default, as a host is often given a
    /// whole /64; 128 counts each address (many clients in one /64).
    #[serde(default = "default_ipv6_limit_prefix")]
    pub ipv6_limit_prefix: u8,
    /// MiB that chunks received from all upload streams together (backups,
    /// partners' replication) may hold in memory at once; a stream past it
    /// writes out what it holds and waits.
    #[serde(default = "default_ingest_memory_mib")]
    pub ingest_memory_mib: u32,
    /// The server's own log file (stderr when unset); rolled over per
    /// `log_rotation`.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// `text` or `json` lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `daily`, `hourly` or `never` (leave it to logrotate).
    #[serde(default)]
    pub log_rotation: LogRotation,
    /// Rolled-over log files kept besides the current one.
    #[serde(default = "default_log_max_files")]
    pub log_max_files: usize,
    /// Where scheduled catalog backups go (an absolute path, best on
    /// another disk than the data dir); unset: none are taken.
    #[serde(default)]
    pub db_backup_dir: Option<PathBuf>,
    /// Hours between scheduled catalog backups.
    #[serde(default = "default_db_backup_interval_hours")]
    pub db_backup_interval_hours: u64,
    /// Scheduled catalog copies kept in `db_backup_dir`; older ones are
    /// deleted after each new copy.
    #[serde(default = "default_db_backup_keep")]
    pub db_backup_keep: usize,
    /// Where sealed containers live (`[pool]`): on the data dir's disk
    /// (`local`, the default) or in an S3-compatible bucket (`s3`).
    #[serde(default)]
    pub pool: PoolConfig,
    /// More storage pools (`[pools.NAME]`), each with the keys of `[pool]`
    /// and its own containers; a node's data goes to the pool `update node
    /// --pool` names (DEFAULT, the `[pool]` above, until then). Names are
    /// case-insensitive and shown in upper case.
    #[serde(default)]
    pub pools: std::collections::BTreeMap<String, PoolConfig>,
    /// Where the Prometheus metrics endpoint listens (such as
    /// `127.0.0.1:9464`; port 0 picks one, written to DATA_DIR/metrics.addr);
    /// unset: no endpoint.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Scheduled pool audits (`[audit]`).
    #[serde(default)]
    pub audit: AuditSchedule,
    /// Seconds a stop (SIGTERM, SIGINT) waits for calls in progress (a
    /// backup, `audit pool`, a replication run) before it cuts them off
    /// and stops anyway; nothing a cut-off call wrote is visible.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
}

/// Scheduled audits of the storage pool: `[audit]` in the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditSchedule {
    /// Hours between audits (fractions allowed); 0: none. An audit runs when
    /// the last pool audit (scheduled or not) ended this long ago, at start
    /// too when one is overdue.
    #[serde(default)]
    pub interval_hours: f64,
    /// Each audit reads one slice of this many, the next one each time, so
    /// `slices` audits read every chunk once (with a daily interval and
    /// 7 slices, the pool every week).
    #[serde(default = "default_audit_slices")]
    pub slices: u32,
    /// Repair damaged chunks from another storage pool or the replication
    /// partner.
    #[serde(default)]
    pub fix: bool,
}

impl Default for AuditSchedule {
    fn default() -> Self {
        AuditSchedule {
            interval_hours: 0.0,
            slices: default_audit_slices(),
            fix: false,
        }
    }
}

impl AuditSchedule {
    /// The time between audits; `None` when none are scheduled.
    #[must_use]
    pub fn interval(&self) -> Option<std::time::Duration> {
        (self.interval_hours > 0.0)
            .then(|| std::time::Duration::from_secs_f64(self.interval_hours * 3600.0))
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !self.interval_hours.is_finite() || !(0.0..=8760.0).contains(&self.interval_hours) {
            return Err(ConfigError::Invalid(format!(
                "audit.interval_hours {} is out of range: give 0 (no scheduled audits) to 8760 hours; 24 is usual",
                self.interval_hours
            )));
        }
        if !(1..=10_000).contains(&self.slices) {
            return Err(ConfigError::Invalid(format!(
                "audit.slices {} is out of range: give 1 (every chunk each time) to 10000; 7 with a daily interval reads everything weekly",
                self.slices
            )));
        }
        Ok(())
    }
}

fn default_audit_slices() -> u32 {
    1
}

/// The storage pool: `[pool]` in the server's configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `local` or `s3`.
    #[serde(default)]
    pub kind: PoolKind,
    /// The S3 endpoint URL (`https://s3.example.net`; `http://` only on a
    /// loopback address). Unset with `s3`: AWS's own endpoint for `region`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The bucket, which must exist; one bucket and prefix per server.
    #[serde(default)]
    pub bucket: Option<String>,
    /// The bucket's region.
    #[serde(default = "default_pool_region")]
    pub region: String,
    /// Prefix of every object this server writes (`SERVER1/`).
    #[serde(default)]
    pub prefix: String,
    /// Path-style URLs (`endpoint/bucket/key`), which MinIO, Ceph RGW and
    /// Garage expect; `false` for virtual-hosted style (AWS).
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// A TOML file holding `access_key_id` and `secret_access_key`,
    /// readable by the server's user only. Unset: `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` from the environment.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A local pool of `[pools.NAME]`: the absolute directory its
    /// containers go to (another disk, say). Unset: DATA_DIR/pools/NAME,
    /// which is also where an S3 pool of `[pools.NAME]` stages containers.
    /// Not in `[pool]`, whose containers are DATA_DIR/containers.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// A container is sealed and uploaded once it holds this many MiB.
    #[serde(default = "default_container_mib")]
    pub container_mib: u64,
    /// MiB of object data kept in memory for reads (ranged GETs fetch
    /// whole 1 MiB blocks, so neighbouring chunks come with one request).
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
    /// Send a SHA-256 of each uploaded part (`x-amz-checksum-sha256`), which
    /// the object store checks before it keeps the part: bytes changed on
    /// the way are refused, not stored. `false` only for a store that
    /// rejects the header.
    #[serde(default = "default_true")]
    pub upload_checksum: bool,
}

/// Where sealed containers are kept.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Every container stays in `DATA_DIR/containers`.
    #[default]
    Local,
    /// Sealed containers are uploaded to an S3 bucket and their local
    /// copies removed; the open container is staged locally.
    S3,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            kind: PoolKind::Local,
            endpoint: None,
            bucket: None,
            region: default_pool_region(),
            prefix: String::new(),
            path_style: true,
            credentials_file: None,
            directory: None,
            container_mib: default_container_mib(),
            cache_mib: default_cache_mib(),
            upload_checksum: true,
        }
    }
}

impl PoolConfig {
    /// Bytes at which a container is sealed.
    #[must_use]
    pub fn container_bytes(&self) -> u64 {
        self.container_mib * 1024 * 1024
    }

    /// Checks the values of `[pool]` that can be checked without contacting
    /// the store.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key, the value and the fix.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.directory {
            return Err(ConfigError::Invalid(format!(
                "pool.directory {} is not allowed: the default pool's containers are DATA_DIR/containers; \
                 give another directory to a pool of its own ([pools.NAME])",
                dir.display()
            )));
        }
        self.check_as("pool")
    }

    /// [`Self::check`] for the table `table` (`pool` or `pools.NAME`),
    /// which every message names.
    fn check_as(&self, table: &str) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=4096).contains(&self.container_mib) {
            return invalid(format!(
                "{table}.container_mib {} is out of range: give 1 to 4096 MiB (256 is usual)",
                self.container_mib
            ));
        }
        if !(1..=65_536).contains(&self.cache_mib) {
            return invalid(format!(
                "{table}.cache_mib {} is out of range: give 1 to 65536 MiB",
                self.cache_mib
            ));
        }
        if let Some(dir) = &self.directory
            && !dir.is_absolute()
        {
            return invalid(format!(
                "{table}.directory {} must be an absolute path",
                dir.display()
            ));
        }
        if self.kind == PoolKind::Local {
            return Ok(());
        }
        if let Some(dir) = &self.directory {
            return invalid(format!(
                "{table}.directory {} is for local pools; an S3 pool stages its containers in DATA_DIR/pools/NAME",
                dir.display()
            ));
        }
        match self.bucket.as_deref() {
            None | Some("") => {
                return invalid(format!(
                    "{table}.kind is s3 but {table}.bucket is not set; name an existing bucket"
                ));
            }
            Some(b)
                if !b
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) =>
            {
                return invalid(format!(
                    "{table}.bucket {b:?} is not a valid bucket name: use letters, digits, '-', '.' or '_'"
                ));
            }
            Some(_) => {}
        }
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|p| p == "..") {
            return invalid(format!(
                "{table}.prefix {:?} must be relative and without '..' (such as \"SERVER1/\")",
                self.prefix
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            check_endpoint(table, endpoint)?;
        }
        Ok(())
    }

    /// Whether the endpoint is plain HTTP (allowed on loopback only).
    #[must_use]
    pub fn plain_http(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    }
}

/// An endpoint is an `https://` URL, or `http://` to a loopback address:
/// the credentials sign every request, and the data is the customer's.
fn check_endpoint(table: &str, endpoint: &str) -> Result<(), ConfigError> {
    let invalid = |why: &str| {
        Err(ConfigError::Invalid(format!(
            "{table}.endpoint {endpoint:?} {why}"
        )))
    };
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return invalid("is not a URL; give one such as https://s3.example.net");
    };
    let host_port = rest.split('/').next().unwrap_or_default();
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return invalid("names no host");
    }
    match scheme {
        "https" => Ok(()),
        "http" => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                invalid("is plain HTTP to a host that is not loopback; use https://")
            }
        }
        _ => invalid("must start with https:// (or http:// to a loopback address)"),
    }
}

/// The longest pool name, as TSM's storage pool names.
pub const MAX_POOL_NAME: usize = 30;

/// Whether `name` may name a storage pool: 1-30 ASCII letters, digits,
/// `_` or `-` (so it is its own TOML key and safe in every message).
#[must_use]
pub fn is_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_POOL_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `[pools.NAME]` with upper-case names, each checked: a valid name other
/// than DEFAULT (the `[pool]` table), not given twice, and no two S3 pools
/// (`default` among them) writing under one bucket and prefix.
fn named_pools(
    pools: std::collections::BTreeMap<String, PoolConfig>,
    default: &PoolConfig,
) -> Result<std::collections::BTreeMap<String, PoolConfig>, ConfigError> {
    let mut out = std::collections::BTreeMap::new();
    let mut places = vec![(String::from("DEFAULT"), default)];
    for (given, pool) in &pools {
        let name = given.to_ascii_uppercase();
        if !is_pool_name(&name) {
            return Err(ConfigError::Invalid(format!(
                "pools.{given} is not a valid pool name: use 1-{MAX_POOL_NAME} letters, digits, '_' or '-'"
            )));
        }
        if name == "DEFAULT" {
            return Err(ConfigError::Invalid(format!(
                "pools.{given}: DEFAULT is the [pool] table's name; give this pool another"
            )));
        }
        pool.check_as(&format!("pools.{given}"))?;
        if out.contains_key(&name) {
            return Err(ConfigError::Invalid(format!(
                "pools.{given} is given twice (names are case-insensitive)"
            )));
        }
        for (other, place) in &places {
            if pool.kind == PoolKind::S3
                && place.kind == PoolKind::S3
                && pool.endpoint == place.endpoint
                && pool.bucket == place.bucket
                && pool.prefix == place.prefix
            {
                return Err(ConfigError::Invalid(format!(
                    "pools.{given} writes to the same bucket and prefix as pool {other}; give each pool a prefix of its own"
                )));
            }
            if pool.directory.is_some() && pool.directory == place.directory {
                return Err(ConfigError::Invalid(format!(
                    "pools.{given} has the same directory as pool {other}; give each pool a directory of its own"
                )));
            }
        }
        places.push((name.clone(), pool));
        out.insert(name, pool.clone());
    }
    Ok(out)
}

fn default_pool_region() -> String {
    "us-east-1".into()
}

fn default_true() -> bool {
    true
}

fn default_container_mib() -> u64 {
    256
}

/// A restore asks for its next batch while it takes the current one, so
/// two requests' waves (a quarter of the cache each) share the cache. At
/// 64 MiB they evicted each other's blocks and the early call gained
/// nothing on the benchmark set; with 128 and 256 MiB its S3 restore took
/// 6.7-7.4 and 6.3-7.1 s, against 8.1-8.4 s with 64 MiB and one request at
/// a time.
fn default_cache_mib() -> u64 {
    256
}

fn default_db_backup_interval_hours() -> u64 {
    24
}

fn default_db_backup_keep() -> usize {
    7
}

fn default_log_max_files() -> usize {
    14
}

pub(crate) fn default_idle_timeout_seconds() -> u64 {
    15 * 60
}

pub(crate) fn default_max_connections() -> usize {
    1024
}

pub(crate) fn default_ipv6_limit_prefix() -> u8 {
    tandem_tls::DEFAULT_IPV6_LIMIT_PREFIX
}

pub(crate) fn default_ingest_memory_mib() -> u32 {
    crate::repository::ingest::DEFAULT_INGEST_MEMORY_MIB
}

fn default_vault_clock_skew_seconds() -> u64 {
    300
}

pub(crate) fn default_shutdown_grace_seconds() -> u64 {
    60
}

fn default_comm_timeout_seconds() -> u64 {
    60
}

fn default_invalid_password_limit() -> u32 {
    10
}

fn default_expire_interval_hours() -> u64 {
    24
}

/// Values given on the command line; `None` leaves the layer below in force.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `--insecure-plaintext`.
    pub insecure_plaintext: bool,
    /// `--rename`.
    pub rename: bool,
    /// `--log-file`.
    pub log_file: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The layers could not be read or merged.
    #[error("server configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("server configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Builds the configuration from the layers.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, key or value at fault.
    pub fn load(file: Option<&Path>, overrides: &ConfigOverrides) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .set_default("data_dir", "./tandem-data")?
            .set_default("listen", "127.0.0.1:1500")?
            .set_default("name", "TANDEM")?;
        if let Some(file) = file {
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder
            // `TANDEM_SERVER_POOL__KIND=s3` sets `pool.kind`: a double
            // underscore nests, a single one is part of the key.
            .add_source(
                config::Environment::with_prefix("TANDEM_SERVER")
                    .prefix_separator("_")
                    .separator("__"),
            )
            .set_override_option(
                "data_dir",
                overrides
                    .data_dir
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            )?
            .set_override_option("listen", overrides.listen.clone())?
            .set_override_option("name", overrides.name.clone())?;
        if overrides.insecure_plaintext {
            builder = builder.set_override("insecure_plaintext", true)?;
        }
        if overrides.rename {
            builder = builder.set_override("rename", true)?;
        }
        builder = builder.set_override_option(
            "log_file",
            overrides
                .log_file
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
        )?;
        if let Some(format) = overrides.log_format {
            let word = match format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            };
            builder = builder.set_override("log_format", word)?;
        }
        let mut cfg: ServerConfig = builder.build()?.try_deserialize()?;
        cfg.check_transport()?;
        cfg.name = crate::model::normalize_node_name(&cfg.name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "name {:?} is not valid: use 1-64 letters, digits, '_', '-' or '.'",
                cfg.name
            ))
        })?;
        if !(16..=65_536).contains(&cfg.ingest_memory_mib) {
            return Err(ConfigError::Invalid(format!(
                "ingest_memory_mib {} is out of range: give 16 to 65536 MiB (the memory upload streams together may hold)",
                cfg.ingest_memory_mib
            )));
        }
        if !(1..=3_600).contains(&cfg.shutdown_grace_seconds) {
            return Err(ConfigError::Invalid(format!(
                "shutdown_grace_seconds {} is out of range: give 1 to 3600 seconds (keep it below systemd's TimeoutStopSec)",
                cfg.shutdown_grace_seconds
            )));
        }
        if !(1..=86_400).contains(&cfg.comm_timeout_seconds) {
            return Err(ConfigError::Invalid(format!(
                "comm_timeout_seconds {} is out of range: give 1 to 86400 seconds",
                cfg.comm_timeout_seconds
            )));
        }
        if !(1..=604_800).contains(&cfg.idle_timeout_seconds) {
            return Err(ConfigError::Invalid(format!(
                "idle_timeout_seconds {} is out of range: give 1 to 604800 seconds (one week)",
                cfg.idle_timeout_seconds
            )));
        }
        if !(1..=65_536).contains(&cfg.max_connections) {
            return Err(ConfigError::Invalid(format!(
                "max_connections {} is out of range: give 1 to 65536",
                cfg.max_connections
            )));
        }
        if !(32..=128).contains(&cfg.ipv6_limit_prefix) {
            return Err(ConfigError::Invalid(format!(
                "ipv6_limit_prefix {} is out of range: give 32 to 128 (64 counts each /64 as one caller, 128 each address)",
                cfg.ipv6_limit_prefix
            )));
        }
        if let Some(file) = &cfg.log_file
            && file
                .parent()
                .is_some_and(|dir| same_dir(dir, &cfg.data_dir))
        {
            return Err(ConfigError::Invalid(format!(
                "log_file {} is in the data directory; give it a directory of its own (such as /var/log/tandem/)",
                file.display()
            )));
        }
        if !(1..=3650).contains(&cfg.log_max_files) {
            return Err(ConfigError::Invalid(format!(
                "log_max_files {} is out of range: give 1 to 3650 files",
                cfg.log_max_files
            )));
        }
        cfg.check_db_backup()?;
        cfg.pool.check()?;
        cfg.pools = named_pools(std::mem::take(&mut cfg.pools), &cfg.pool)?;
        cfg.audit.check()?;
        Ok(cfg)
    }

    /// A scheduled catalog backup needs an absolute directory apart from
    /// the data dir, a sane interval and at least one copy kept.
    fn check_db_backup(&self) -> Result<(), ConfigError> {
        let Some(dir) = &self.db_backup_dir else {
            return Ok(());
        };
        if !dir.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "db_backup_dir {} is not an absolute path; give one such as /srv/tandem-db-backups",
                dir.display()
            )));
        }
        if same_dir(dir, &self.data_dir) {
            return Err(ConfigError::Invalid(format!(
                "db_backup_dir {} is the data directory; give a directory of its own, best on another disk",
                dir.display()
            )));
        }
        if !(1..=8760).contains(&self.db_backup_interval_hours) {
            return Err(ConfigError::Invalid(format!(
                "db_backup_interval_hours {} is out of range: give 1 to 8760 hours",
                self.db_backup_interval_hours
            )));
        }
        if !(1..=1000).contains(&self.db_backup_keep) {
            return Err(ConfigError::Invalid(format!(
                "db_backup_keep {} is out of range: give 1 to 1000 copies",
                self.db_backup_keep
            )));
        }
        Ok(())
    }

    /// Where and how the server logs.
    #[must_use]
    pub fn log_settings(&self) -> LogSettings {
        LogSettings {
            file: self.log_file.clone(),
            format: self.log_format,
            rotation: self.log_rotation,
            max_files: self.log_max_files,
        }
    }

    /// The limits the TLS listener applies to open connections.
    #[must_use]
    pub fn connection_limits(&self) -> tandem_tls::ConnectionLimits {
        tandem_tls::ConnectionLimits {
            max_connections: self.max_connections,
            max_per_address: self.max_connections.min(128),
            ipv6_prefix: self.ipv6_limit_prefix,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_seconds),
        }
    }
}

/// Whether two directory paths name the same directory (when both exist),
/// or are spelled the same.
fn same_dir(a: &Path, b: &Path) -> bool {
    let a = if a.as_os_str().is_empty() {
        Path::new(".")
    } else {
        a
    };
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl ServerConfig {
    /// Plaintext only on loopback; a certificate only with its key.
    fn check_transport(&self) -> Result<(), ConfigError> {
        if self.insecure_plaintext && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "insecure_plaintext is allowed only on a loopback address, not on {}; remove it to serve TLS",
                self.listen
            )));
        }
        // The metrics endpoint is plaintext too then: its bearer token and
        // the node names it lists stay on this machine.
        if let Some(metrics) = self.metrics_listen.filter(|m| !m.ip().is_loopback())
            && self.insecure_plaintext
        {
            return Err(ConfigError::Invalid(format!(
                "insecure_plaintext is allowed only on loopback addresses, and metrics_listen is {metrics}; remove insecure_plaintext to serve TLS, or listen on 127.0.0.1"
            )));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => Err(ConfigError::Invalid(
                "tls_cert and tls_key go together: give both, or neither for a self-signed certificate".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Names the self-signed certificate is made for: the server name,
    /// `localhost` and the listen address.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names = vec![
            self.name.to_ascii_lowercase(),
            "localhost".to_string(),
            self.listen.ip().to_string(),
        ];
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_from(toml: &str) -> Result<ServerConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(&file, toml).unwrap();
        ServerConfig::load(Some(&file), &ConfigOverrides::default())
    }

    #[test]
    fn an_s3_pool_is_read_from_the_file_and_its_bad_values_are_named() {
        let cfg = pool_from(
            "[pool]\nkind = \"s3\"\nendpoint = \"https://s3.example.net\"\nbucket = \"backups\"\nprefix = \"SRV1/\"\n",
        )
        .unwrap();
        assert_eq!(cfg.pool.kind, PoolKind::S3);
        assert_eq!(cfg.pool.container_bytes(), 256 << 20);
        assert!(cfg.pool.path_style);
        assert_eq!(pool_from("").unwrap().pool, PoolConfig::default());
        for (toml, says) in [
            ("[pool]\nkind = \"s3\"\n", "pool.bucket is not set"),
            (
                "[pool]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://s3.example.net\"\n",
                "not loopback",
            ),
            (
                "[pool]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"ftp://127.0.0.1\"\n",
                "must start with https://",
            ),
            (
                "[pool]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"s3.example.net\"\n",
                "is not a URL",
            ),
            (
                "[pool]\nkind = \"s3\"\nbucket = \"b c\"\n",
                "not a valid bucket name",
            ),
            (
                "[pool]\nkind = \"s3\"\nbucket = \"b\"\nprefix = \"../x/\"\n",
                "without '..'",
            ),
            (
                "[pool]\ncontainer_mib = 0\n",
                "pool.container_mib 0 is out of range",
            ),
            ("[pool]\nkind = \"ceph\"\n", "ceph"),
        ] {
            let err = pool_from(toml).unwrap_err().to_string();
            assert!(err.contains(says), "{toml:?}: {err}");
        }
        // Plain HTTP is for a loopback endpoint only.
        let local = pool_from(
            "[pool]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert!(local.pool.plain_http());
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(&file, "name = \"primary\"\nlisten = \"127.0.0.1:1600\"\n").unwrap();
        let cfg = ServerConfig::load(Some(&file), &ConfigOverrides::default()).unwrap();
        assert_eq!(cfg.name, "PRIMARY");
        assert_eq!(cfg.listen.port(), 1600);
        assert_eq!(cfg.data_dir, PathBuf::from("./tandem-data"));
        let flags = ConfigOverrides {
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let cfg = ServerConfig::load(Some(&file), &flags).unwrap();
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.expire_interval_hours, 24);
        assert_eq!(cfg.policy, crate::model::Policy::default());
    }

    #[test]
    fn policy_defaults_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "expire_interval_hours = 6\n[policy]\nverexists = 5\nretonly = 90\n",
        )
        .unwrap();
        let cfg = ServerConfig::load(Some(&file), &ConfigOverrides::default()).unwrap();
        assert_eq!(cfg.expire_interval_hours, 6);
        assert_eq!(cfg.policy.verexists, 5);
        assert_eq!(cfg.policy.retonly, 90);
        assert_eq!(cfg.policy.verdeleted, 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let err = ServerConfig::load(Some(&file), &ConfigOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let flags = ConfigOverrides {
            listen: Some("not-an-address".into()),
            ..Default::default()
        };
        assert!(ServerConfig::load(None, &flags).is_err());
        let flags = ConfigOverrides {
            listen: Some("0.0.0.0:1500".into()),
            insecure_plaintext: true,
            ..Default::default()
        };
        let err = ServerConfig::load(None, &flags).unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
        // Nor may its metrics endpoint listen beyond this machine then.
        std::fs::write(&file, "metrics_listen = \"0.0.0.0:9464\"\n").unwrap();
        let flags = ConfigOverrides {
            insecure_plaintext: true,
            ..Default::default()
        };
        let err = ServerConfig::load(Some(&file), &flags)
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics_listen is 0.0.0.0:9464"), "{err}");
        std::fs::write(&file, "tls_cert = \"/etc/cert.pem\"\n").unwrap();
        let err = ServerConfig::load(Some(&file), &ConfigOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_key"), "{err}");
        let flags = ConfigOverrides {
            name: Some("bad name".into()),
            ..Default::default()
        };
        assert!(
            ServerConfig::load(None, &flags)
                .unwrap_err()
                .to_string()
                .contains("bad name")
        );
    }

    #[test]
    fn limits_out_of_range_are_refused_with_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        for (line, key, range) in [
            (
                "comm_timeout_seconds = 0",
                "comm_timeout_seconds 0",
                "1 to 86400",
            ),
            (
                "comm_timeout_seconds = 90000",
                "comm_timeout_seconds 90000",
                "1 to 86400",
            ),
            (
                "ingest_memory_mib = 8",
                "ingest_memory_mib 8",
                "16 to 65536",
            ),
            (
                "ingest_memory_mib = 100000",
                "ingest_memory_mib 100000",
                "16 to 65536",
            ),
            (
                "shutdown_grace_seconds = 0",
                "shutdown_grace_seconds 0",
                "1 to 3600",
            ),
            (
                "idle_timeout_seconds = 0",
                "idle_timeout_seconds 0",
                "1 to 604800",
            ),
            ("max_connections = 0", "max_connections 0", "1 to 65536"),
            (
                "ipv6_limit_prefix = 16",
                "ipv6_limit_prefix 16",
                "32 to 128",
            ),
            (
                "ipv6_limit_prefix = 129",
                "ipv6_limit_prefix 129",
                "32 to 128",
            ),
            (
                "max_connections = 100000",
                "max_connections 100000",
                "1 to 65536",
            ),
        ] {
            std::fs::write(&file, format!("{line}\n")).unwrap();
            let err = ServerConfig::load(Some(&file), &ConfigOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(range), "{line}: {err}");
        }
        std::fs::write(&file, "comm_timeout_seconds = -5\n").unwrap();
        let err = ServerConfig::load(Some(&file), &ConfigOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("comm_timeout_seconds"), "{err}");
        std::fs::write(&file, "max_connections = 64\nidle_timeout_seconds = 30\n").unwrap();
        let limits = ServerConfig::load(Some(&file), &ConfigOverrides::default())
            .unwrap()
            .connection_limits();
        assert_eq!(limits.max_connections, 64);
        assert_eq!(limits.max_per_address, 64);
        assert_eq!(limits.idle_timeout, std::time::Duration::from_secs(30));
    }

    #[test]
    fn catalog_backup_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        let data = dir.path().join("data");
        for (lines, expected) in [
            (
                "db_backup_dir = \"rel\"\n".to_string(),
                "not an absolute path",
            ),
            (
                format!("db_backup_dir = \"{}\"\n", data.display()),
                "is the data directory",
            ),
            (
                "db_backup_dir = \"/srv/x\"\ndb_backup_keep = 0\n".to_string(),
                "db_backup_keep 0 is out of range",
            ),
            (
                "db_backup_dir = \"/srv/x\"\ndb_backup_interval_hours = 0\n".to_string(),
                "db_backup_interval_hours 0 is out of range",
            ),
        ] {
            std::fs::write(&file, format!("data_dir = \"{}\"\n{lines}", data.display())).unwrap();
            let err = ServerConfig::load(Some(&file), &ConfigOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{lines}: {err}");
        }
        std::fs::write(&file, "db_backup_dir = \"/srv/x\"\n").unwrap();
        let cfg = ServerConfig::load(Some(&file), &ConfigOverrides::default()).unwrap();
        assert_eq!(cfg.db_backup_interval_hours, 24);
        assert_eq!(cfg.db_backup_keep, 7);
    }

    #[test]
    fn more_pools_are_named_in_upper_case_and_their_bad_values_are_named() {
        let cfg = pool_from(
            "[pools.tape]\nkind = \"local\"\ndirectory = \"/srv/tape\"\n\
             [pools.Cloud-1]\nkind = \"s3\"\nbucket = \"b\"\nprefix = \"c/\"\n",
        )
        .unwrap();
        let names: Vec<&String> = cfg.pools.keys().collect();
        assert_eq!(names, ["CLOUD-1", "TAPE"]);
        assert_eq!(
            cfg.pools["TAPE"].directory.as_deref(),
            Some(Path::new("/srv/tape"))
        );
        for (toml, wanted) in [
            ("[pools.default]\n", "DEFAULT is the [pool] table's name"),
            ("[pools.\"a b\"]\n", "not a valid pool name"),
            (
                "[pools.x]\ndirectory = \"relative\"\n",
                "pools.x.directory relative must be an absolute path",
            ),
            (
                "[pool]\ndirectory = \"/srv/d\"\n",
                "pool.directory /srv/d is not allowed",
            ),
            (
                "[pools.x]\nkind = \"s3\"\n",
                "pools.x.kind is s3 but pools.x.bucket is not set",
            ),
            (
                "[pools.x]\ncontainer_mib = 0\n",
                "pools.x.container_mib 0 is out of range",
            ),
            (
                "[pool]\nkind = \"s3\"\nbucket = \"b\"\n[pools.x]\nkind = \"s3\"\nbucket = \"b\"\n",
                "same bucket and prefix as pool DEFAULT",
            ),
            (
                "[pools.x]\ndirectory = \"/srv/d\"\n[pools.y]\ndirectory = \"/srv/d\"\n",
                "same directory as pool X",
            ),
            (
                "[pools.x]\nkind = \"s3\"\nbucket = \"b\"\ndirectory = \"/srv/d\"\n",
                "is for local pools",
            ),
        ] {
            let err = pool_from(toml).unwrap_err().to_string();
            assert!(err.contains(wanted), "{toml}: {err}");
        }
    }
}
