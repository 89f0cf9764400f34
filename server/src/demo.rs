//! `tandem-server demo`: the whole story on embedded defaults, in a temporary
//! directory. It starts a primary and a secondary server on 127.0.0.1 (free
//! ports), registers a node and pairs the servers with the real console code,
//! backs a sample tree up with the real client code, changes it, backs it up
//! again, restores and verifies it, replicates the node, stops the primary,
//! restores from the secondary in failover mode (showing the dsierror.log
//! lines), starts the primary again and shows the failback.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;

/// A deterministic xorshift generator: the sample tree is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "backup",
    "restore",
    "node",
    "replica",
    "server",
    "client",
    "filespace",
    "version",
    "policy",
    "chunk",
    "catalog",
    "failover",
    "primary",
    "secondary",
    "tandem",
    "data",
];

/// Text-like, compressible content of `len` bytes.
fn sample_text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
        out.push(if rng.next().is_multiple_of(12) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(len);
    out
}

/// Builds the sample tree: nested folders of small files, an empty file,
/// duplicates, a 24 MiB file, names with spaces and non-ASCII, and a symlink.
fn make_sample_tree(root: &Path) -> std::io::Result<()> {
    let mut rng = Rng(0x7a6e_6465_6d30_0001);
    for d in 0..6 {
        let dir = root.join(format!("projects/team {d}/docs"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..40 {
            let len = 1024 + (rng.next() % 60_000) as usize;
            std::fs::write(
                dir.join(format!("note-{f:03}.txt")),
                sample_text(&mut rng, len),
            )?;
        }
    }
    std::fs::create_dir_all(root.join("media"))?;
    let big = sample_text(&mut rng, 24 * 1024 * 1024);
    std::fs::write(root.join("media/archive.bin"), &big)?;
    std::fs::write(root.join("media/archive copy.bin"), &big)?;
    std::fs::write(root.join("empty.txt"), b"")?;
    std::fs::write(
        root.join("Grüße aus Köln.txt"),
        "non-ASCII names are kept\n",
    )?;
    std::os::unix::fs::symlink("media/archive.bin", root.join("latest"))?;
    Ok(())
}

/// Changes about 1% of the tree: edits, a deletion, a new file.
fn change_sample_tree(root: &Path) -> std::io::Result<()> {
    let mut rng = Rng(0x7a6e_6465_6d30_0002);
    for f in [3, 17] {
        let path = root.join(format!("projects/team 1/docs/note-{f:03}.txt"));
        std::fs::write(path, sample_text(&mut rng, 5000))?;
    }
    std::fs::remove_file(root.join("projects/team 2/docs/note-000.txt"))?;
    std::fs::write(
        root.join("projects/new-report.txt"),
        sample_text(&mut rng, 12_000),
    )
}

/// Compares two trees: same entries, same file bytes, same link targets.
fn compare_trees(a: &Path, b: &Path) -> Result<(u64, u64), String> {
    let mut files = 0u64;
    let mut bytes = 0u64;
    let list = |root: &Path| -> Result<Vec<PathBuf>, String> {
        let mut v = Vec::new();
        for e in walk(root)? {
            v.push(
                e.strip_prefix(root)
                    .map_err(|e| e.to_string())?
                    .to_path_buf(),
            );
        }
        v.sort();
        Ok(v)
    };
    let (left, right) = (list(a)?, list(b)?);
    if left != right {
        return Err(format!(
            "the trees list different entries ({} vs {})",
            left.len(),
            right.len()
        ));
    }
    for rel in left {
        let (x, y) = (a.join(&rel), b.join(&rel));
        let mx = std::fs::symlink_metadata(&x).map_err(|e| e.to_string())?;
        if mx.file_type().is_symlink() {
            if std::fs::read_link(&x).ok() != std::fs::read_link(&y).ok() {
                return Err(format!("symlink {} differs", rel.display()));
            }
        } else if mx.is_file() {
            let (dx, dy) = (std::fs::read(&x), std::fs::read(&y));
            match (dx, dy) {
                (Ok(dx), Ok(dy)) if dx == dy => {
                    files += 1;
                    bytes += dx.len() as u64;
                }
                _ => return Err(format!("file {} differs", rel.display())),
            }
        }
    }
    Ok((files, bytes))
}

fn walk(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    Ok(out)
}

/// Sets or removes `vault_dir` in the demo's options file (a top-level key,
/// so it goes on the second line, before any table).
fn set_vault_dir(options: &Path, vault: Option<&Path>) -> Result<(), String> {
    let text = std::fs::read_to_string(options).map_err(|e| e.to_string())?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("vault_dir"))
        .collect();
    let mut out: Vec<String> = kept.iter().map(|l| (*l).to_string()).collect();
    if let Some(dir) = vault {
        out.insert(
            1.min(out.len()),
            format!("vault_dir = {:?}", dir.display().to_string()),
        );
    }
    std::fs::write(options, out.join("\n") + "\n").map_err(|e| e.to_string())
}

fn step(title: &str) {
    println!("\n==> {title}");
}

async fn client(options: &Path, args: &[&str]) -> Result<(), String> {
    client_expecting(options, args, 0).await
}

async fn client_expecting(options: &Path, args: &[&str], expected: u8) -> Result<(), String> {
    let mut full = vec!["tandem", "--options", options.to_str().unwrap_or_default()];
    full.extend_from_slice(args);
    println!("$ tandem {}", args.join(" "));
    let status = tandem_client::run(full).await;
    if status.code() == expected {
        Ok(())
    } else {
        Err(format!(
            "tandem {} exited with {}, expected {expected}",
            args[0],
            status.code()
        ))
    }
}

/// A server running inside the demo process.
struct DemoServer {
    name: &'static str,
    data_dir: PathBuf,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), crate::error::ServerError>>,
}

/// How long a demo server may take to start serving: 30 s in 50 ms steps.
const START_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(50);
const START_WAIT_STEPS: u32 = 600;

impl DemoServer {
    async fn start(name: &'static str, data_dir: PathBuf, listen: &str) -> Result<Self, String> {
        let config = ServerConfig {
            data_dir: data_dir.clone(),
            listen: listen.parse().map_err(|e| format!("{e}"))?,
            name: name.into(),
            expire_interval_hours: 0,
            replication_interval_minutes: 0,
            policy: crate::model::Policy::default(),
            tls_cert: None,
            tls_key: None,
            insecure_plaintext: false,
            rename: false,
            invalid_password_limit: 10,
            comm_timeout_seconds: 60,
            vault_clock_skew_seconds: 300,
            idle_timeout_seconds: crate::config::default_idle_timeout_seconds(),
            max_connections: crate::config::default_max_connections(),
            ipv6_limit_prefix: crate::config::default_ipv6_limit_prefix(),
            ingest_memory_mib: crate::config::default_ingest_memory_mib(),
            log_file: None,
            log_format: crate::logging::LogFormat::Text,
            log_rotation: crate::logging::LogRotation::Never,
            log_max_files: 1,
            db_backup_dir: None,
            db_backup_interval_hours: 24,
            db_backup_keep: 7,
            pool: crate::config::PoolConfig::default(),
            pools: std::collections::BTreeMap::new(),
            metrics_listen: None,
            audit: crate::config::AuditSchedule::default(),
            shutdown_grace_seconds: crate::config::default_shutdown_grace_seconds(),
        };
        let state = crate::ServerState::open(config).map_err(|e| e.to_string())?;
        // A restarted server takes its old port back; allow the OS a moment.
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        let listener = listener.ok_or_else(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!(
            "server {name} (guid {}) on https://{addr}, data in {}\n  certificate fingerprint (SHA-256) {}",
            state.guid,
            data_dir.display(),
            state.identity.fingerprint()
        );
        // The server writes its fingerprint, then `listen.addr`, once it
        // serves; the admin commands that follow read that fingerprint. A
        // copy left by this data directory's last start says nothing.
        let serving = data_dir.join("listen.addr");
        let _ = std::fs::remove_file(&serving);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(crate::run(state, listener, shutdown.clone()));
        for _ in 0..START_WAIT_STEPS {
            if serving.exists() || task.is_finished() {
                break;
            }
            tokio::time::sleep(START_WAIT_STEP).await;
        }
        if task.is_finished() {
            return Err(match task.await {
                Ok(Ok(())) => format!("server {name} stopped as it started"),
                Ok(Err(e)) => format!("server {name} did not start: {e}"),
                Err(e) => format!("server {name} did not start: {e}"),
            });
        }
        if !serving.exists() {
            shutdown.cancel();
            return Err(format!(
                "server {name} did not write {} within {} s",
                serving.display(),
                (START_WAIT_STEP * START_WAIT_STEPS).as_secs()
            ));
        }
        Ok(DemoServer {
            name,
            data_dir,
            addr,
            shutdown,
            task,
        })
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Its certificate fingerprint, as it wrote it beside `listen.addr`.
    fn fingerprint(&self) -> Result<String, String> {
        let file = self.data_dir.join("fingerprint");
        std::fs::read_to_string(&file)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read {}: {e}", file.display()))
    }

    async fn stop(self) -> Result<(), String> {
        self.shutdown.cancel();
        self.task
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn admin(&self, args: &[&str]) -> Result<(), String> {
        let token = self.data_dir.join("admin.token");
        let url = self.url();
        let mut full = vec![
            "tandem-admin",
            "--server",
            &url,
            "--token-file",
            token.to_str().unwrap_or_default(),
        ];
        full.extend_from_slice(args);
        println!("$ tandem-admin ({}) {}", self.name, args.join(" "));
        match crate::console::run(full).await {
            0 => Ok(()),
            code => Err(format!(
                "tandem-admin {} exited with {code}",
                args.join(" ")
            )),
        }
    }
}

fn show_error_log(path: &Path) {
    println!("--- {} ---", path.display());
    print!("{}", std::fs::read_to_string(path).unwrap_or_default());
    println!("---");
}

async fn walk_through(work: &Path) -> Result<(), String> {
    step("Starting a primary and a secondary server on temporary data directories");
    let primary = DemoServer::start("PRIMARY", work.join("primary"), "127.0.0.1:0").await?;
    let secondary = DemoServer::start("SECONDARY", work.join("secondary"), "127.0.0.1:0").await?;
    let primary_listen = primary.addr.to_string();
    let result = story(work, primary, &secondary, &primary_listen).await;
    let stopped = secondary.stop().await;
    result?;
    stopped
}

/// Writes a password file only its owner may read, as the client and the
/// console expect of one.
fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

async fn story(
    work: &Path,
    primary: DemoServer,
    secondary: &DemoServer,
    primary_listen: &str,
) -> Result<(), String> {
    step("Registering node DEMO on the primary and pairing the servers");
    let pw = work.join("demo.password");
    write_secret(&pw, "demo-password\n")?;
    let spw = work.join("server.password");
    write_secret(&spw, "demo-server-secret\n")?;
    let (pw_s, spw_s) = (
        pw.to_string_lossy().into_owned(),
        spw.to_string_lossy().into_owned(),
    );
    primary
        .admin(&["register", "node", "demo", "--password-file", &pw_s])
        .await?;
    primary
        .admin(&[
            "define",
            "server",
            "SECONDARY",
            "--address",
            &secondary.url(),
            "--fingerprint",
            &secondary.fingerprint()?,
            "--server-password-file",
            &spw_s,
        ])
        .await?;
    secondary
        .admin(&[
            "define",
            "server",
            "PRIMARY",
            "--address",
            &primary.url(),
            "--fingerprint",
            &primary.fingerprint()?,
            "--server-password-file",
            &spw_s,
        ])
        .await?;
    primary.admin(&["set", "replserver", "SECONDARY"]).await?;
    primary
        .admin(&["update", "node", "demo", "--replstate", "enabled"])
        .await?;

    let source = work.join("source");
    make_sample_tree(&source).map_err(|e| format!("cannot build the sample tree: {e}"))?;
    let options = work.join("tandem.toml");
    std::fs::write(
        &options,
        format!(
            "# options of the demo client\nnode_name = \"demo\"\nserver_name = \"PRIMARY\"\nserver_address = \"{}\"\nserver_fingerprint = \"{}\"\npassword_file = \"demo.password\"\nstate_dir = \"{}\"\n",
            primary.url(),
            primary.fingerprint()?,
            work.join("state").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let src = source.to_string_lossy().into_owned();

    step("First backup (the duplicate 24 MiB file is stored once)");
    client(&options, &["incremental", &src]).await?;
    step("Unchanged re-run: nothing is sent");
    client(&options, &["incremental", &src]).await?;
    step("Changing 2 files, deleting 1, adding 1, and backing up again");
    change_sample_tree(&source).map_err(|e| e.to_string())?;
    client(&options, &["incremental", &src]).await?;
    step("Versions of the changed folder, inactive ones included");
    client(
        &options,
        &[
            "query",
            "backup",
            &format!("{src}/projects/team 1/docs/note-00*"),
            "--inactive",
        ],
    )
    .await?;
    step("Restoring everything to a second folder and verifying it byte for byte");
    let restored = work.join("restored");
    client(
        &options,
        &[
            "restore",
            &format!("{src}/*"),
            restored.to_str().unwrap_or_default(),
            "--subdir",
        ],
    )
    .await?;
    let (files, bytes) = compare_trees(&source, &restored)?;
    println!("verified: {files} files, {bytes} bytes identical, symlinks and names intact");

    step("Adding a local vault (vault_dir): the next backup's data goes to it too");
    set_vault_dir(&options, Some(&work.join("vault")))?;
    client(&options, &["incremental", &src]).await?;
    client(&options, &["query", "vault"]).await?;

    step("Replicating node DEMO to the secondary");
    primary
        .admin(&["replicate", "node", "demo", "--wait"])
        .await?;
    step("The next logon on the primary pushes the secondary's details into the options file");
    client(&options, &["query", "session"]).await?;
    let text = std::fs::read_to_string(&options).map_err(|e| e.to_string())?;
    println!("--- {} ---\n{text}---", options.display());

    step("Stopping the primary, as if it had failed");
    primary.stop().await?;
    step("Restoring from the secondary in failover mode, and verifying it");
    let from_secondary = work.join("restored-from-secondary");
    client(
        &options,
        &[
            "restore",
            &format!("{src}/*"),
            from_secondary.to_str().unwrap_or_default(),
            "--subdir",
        ],
    )
    .await?;
    let (files, bytes) = compare_trees(&source, &from_secondary)?;
    println!("verified: {files} files, {bytes} bytes identical, restored from the secondary");
    step("The secondary is read-only: an archive is refused in failover mode (exit 12)");
    client_expecting(&options, &["archive", &src], 12).await?;
    step("A backup goes on all the same: into the local vault only");
    let changed = source.join("projects").join("written-while-away.txt");
    std::fs::write(&changed, b"written while the primary was down\n").map_err(|e| e.to_string())?;
    client(&options, &["incremental", &src]).await?;
    client(&options, &["query", "vault"]).await?;
    let error_log = work.join("state").join("dsierror.log");
    show_error_log(&error_log);

    step(
        "Starting the primary again on its address: the next command fails back, and the vault's backup reaches the primary with its original time",
    );
    let primary = DemoServer::start("PRIMARY", work.join("primary"), primary_listen).await?;
    client(&options, &["query", "filespace"]).await?;
    show_error_log(&error_log);
    client(
        &options,
        &["query", "backup", changed.to_str().unwrap_or_default()],
    )
    .await?;
    primary
        .admin(&["replicate", "node", "demo", "--wait"])
        .await?;
    // The rest of the story is about the servers: without the vault, every
    // restore below comes from them.
    set_vault_dir(&options, None)?;
    step("Activity log of the secondary (failover logons are recorded there too)");
    secondary
        .admin(&[
            "query",
            "actlog",
            "--search",
            "failover logon",
            "--limit",
            "4",
        ])
        .await?;
    let scene = Scene {
        work,
        secondary,
        primary_listen,
        options: &options,
        source: &source,
        spw: &spw_s,
    };
    disaster_recovery(&scene, primary).await
}

/// What the disaster-recovery chapter of the demo works with.
struct Scene<'a> {
    work: &'a Path,
    secondary: &'a DemoServer,
    primary_listen: &'a str,
    options: &'a Path,
    source: &'a Path,
    /// The shared server password file.
    spw: &'a str,
}

impl Scene<'_> {
    /// Restores everything from the client's server into `folder` and
    /// checks it against the source.
    async fn restore_and_verify(&self, folder: &str) -> Result<(), String> {
        let into = self.work.join(folder);
        let src = self.source.to_string_lossy();
        client(
            self.options,
            &[
                "restore",
                &format!("{src}/*"),
                into.to_str().unwrap_or_default(),
                "--subdir",
            ],
        )
        .await?;
        let (files, bytes) = compare_trees(self.source, &into)?;
        println!("verified: {files} files, {bytes} bytes identical");
        Ok(())
    }
}

/// Flips one byte in the middle of the largest stored chunk of the server
/// whose data is in `data_dir`, as a failing disk would; returns its id.
fn damage_largest_chunk(data_dir: &Path) -> Result<String, String> {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("catalog.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .map_err(|e| e.to_string())?;
    let (id, container, offset, stored_len): (Vec<u8>, u32, i64, u32) = conn
        .query_row(
            "SELECT id, container, offset, stored_len FROM chunks ORDER BY stored_len DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .map_err(|e| e.to_string())?;
    let path = crate::storage::ChunkStore::container_path(&data_dir.join("containers"), container);
    let mut bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let at = usize::try_from(offset).unwrap_or(0) + stored_len as usize / 2;
    let byte = bytes
        .get_mut(at)
        .ok_or_else(|| format!("{} is shorter than its index says", path.display()))?;
    *byte ^= 0xff;
    std::fs::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(tandem_proto::ChunkId::from_slice(&id).map_or_else(|_| "?".into(), |c| c.to_string()))
}

/// Removes everything in `dir` (the directory itself stays, with its mode).
fn wipe(dir: &Path) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The servers' own disasters: coverage, a catalog copy, a damaged chunk
/// repaired from the secondary, a primary rebuilt from it, and a planned
/// switch of the two servers' roles and back.
async fn disaster_recovery(scene: &Scene<'_>, primary: DemoServer) -> Result<(), String> {
    step(
        "Disaster recovery: is every filespace copied to another server? (exit 8 would name what is not)",
    );
    primary.admin(&["query", "coverage"]).await?;
    step("Copying the primary's catalog while it runs (BACKUP DB)");
    let copies = scene.work.join("catalog-copies");
    std::fs::create_dir_all(&copies).map_err(|e| e.to_string())?;
    primary
        .admin(&["backup", "db", "--to", copies.to_str().unwrap_or_default()])
        .await?;

    step(
        "A failing disk damages one stored chunk on the primary; the restore repairs it from the secondary",
    );
    let chunk = damage_largest_chunk(&primary.data_dir)?;
    println!("flipped one byte of chunk {chunk}");
    scene.restore_and_verify("restored-after-repair").await?;
    primary
        .admin(&["query", "actlog", "--msgno", "TDM0428", "--limit", "2"])
        .await?;

    step("The primary loses its disk: a new, empty primary is rebuilt from the secondary");
    primary.stop().await?;
    let data_dir = scene.work.join("primary");
    wipe(&data_dir)?;
    let old_pin = std::fs::read_to_string(scene.options).map_err(|e| e.to_string())?;
    let primary = DemoServer::start("PRIMARY", data_dir, scene.primary_listen).await?;
    primary
        .admin(&[
            "define",
            "server",
            "SECONDARY",
            "--address",
            &scene.secondary.url(),
            "--fingerprint",
            &scene.secondary.fingerprint()?,
            "--server-password-file",
            scene.spw,
        ])
        .await?;
    primary.admin(&["set", "replserver", "SECONDARY"]).await?;
    let new_pin = primary.fingerprint()?;
    scene
        .secondary
        .admin(&["update", "server", "PRIMARY", "--fingerprint", &new_pin])
        .await?;
    primary.admin(&["recover", "node", "--all"]).await?;
    // The new server has a new certificate: the client pins it (an operator
    // who kept the old DATA_DIR/tls/ would skip this).
    let pinned = old_pin
        .lines()
        .map(|line| {
            if line.starts_with("server_fingerprint") {
                format!("server_fingerprint = \"{new_pin}\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(scene.options, pinned + "\n").map_err(|e| e.to_string())?;
    step("Restoring everything from the rebuilt primary, and verifying it");
    scene.restore_and_verify("restored-from-rebuilt").await?;

    step(
        "A planned role switch: the secondary becomes the node's primary; the client follows at its next logon",
    );
    primary.admin(&["switch", "replication", "--all"]).await?;
    let src = scene.source.to_string_lossy();
    client(scene.options, &["incremental", &src]).await?;
    show_error_log(&scene.work.join("state").join("dsierror.log"));
    scene.restore_and_verify("restored-after-switch").await?;
    step("Switching back, run on the new primary; the client follows again");
    scene
        .secondary
        .admin(&["switch", "replication", "--all"])
        .await?;
    client(scene.options, &["query", "filespace"]).await?;
    primary
        .admin(&["query", "actlog", "--msgno", "TDM0609", "--limit", "4"])
        .await?;
    primary.stop().await
}

/// Runs the demo; `keep` leaves the temporary directory in place.
pub async fn run(keep: bool) -> ExitCode {
    tandem_client::vault::install(Box::new(crate::local_vault::LocalVault));
    let work = match tempfile::Builder::new().prefix("tandem-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("TDM0510E cannot create a temporary directory: {e}");
            return ExitCode::from(12);
        }
    };
    let result = walk_through(work.path()).await;
    if keep {
        println!("\nkept {}", work.keep().display());
    }
    match result {
        Ok(()) => {
            println!(
                "\ndemo complete: backup, restore, replication, failover and failback, a damaged chunk repaired from the secondary, a lost primary rebuilt from it, and a planned role switch and back all worked"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("TDM0510E demo failed: {e}");
            ExitCode::from(12)
        }
    }
}
