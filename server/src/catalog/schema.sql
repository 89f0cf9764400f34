-- Tandem server catalog. Applied at every start; every statement is idempotent.

CREATE TABLE IF NOT EXISTS server_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS nodes (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,      -- upper-case
    password_hash  TEXT NOT NULL,             -- argon2id PHC string
    locked         INTEGER NOT NULL DEFAULT 0,
    failed_logons  INTEGER NOT NULL DEFAULT 0,
    registered_ns  INTEGER NOT NULL,
    last_logon_ns  INTEGER NOT NULL DEFAULT 0,
    verexists      INTEGER,                   -- NULL: server default
    verdeleted     INTEGER,
    retextra       INTEGER,
    retonly        INTEGER,
    retver         INTEGER,                   -- archive copies: days kept
    replstate      TEXT NOT NULL DEFAULT 'disabled',  -- enabled | disabled
    replmode       TEXT NOT NULL DEFAULT 'none',      -- none | send | receive
    replrule       TEXT NOT NULL DEFAULT 'all_data',  -- all_data | active_data | none
    last_repl_ns   INTEGER NOT NULL DEFAULT 0,        -- last successful run (source or target)
    repl_server    TEXT NOT NULL DEFAULT '',          -- source: target of that run; target: source
    pool_id        INTEGER NOT NULL DEFAULT 0,        -- pools.id: where its new data goes
    -- A random number drawn afresh in the transaction of every change to
    -- the node's versions (new, made inactive or hidden, deleted), so a
    -- client's vault can tell that nothing changed since its last pull
    -- without listing every version. 0: no change seen yet. Random rather
    -- than counted, so a catalog restored from an older copy never repeats
    -- a value a client saw for another state.
    change_token   INTEGER NOT NULL DEFAULT 0
);

-- Storage pools by the names the configuration gives them (TSM's storage
-- pools). Pool 0 is `[pool]`, named DEFAULT; `[pools.NAME]` adds the others.
-- A name once given keeps its id, so a pool's chunks stay its own across
-- restarts and changes of the configuration's order.
CREATE TABLE IF NOT EXISTS pools (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE                -- upper-case
);
INSERT OR IGNORE INTO pools (id, name) VALUES (0, 'DEFAULT');

CREATE TABLE IF NOT EXISTS filespaces (
    id                   INTEGER PRIMARY KEY,
    node_id              INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    name                 TEXT NOT NULL,
    last_backup_start_ns INTEGER NOT NULL DEFAULT 0,
    last_backup_end_ns   INTEGER NOT NULL DEFAULT 0,
    last_repl_ns         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (node_id, name)
);

-- The directory part of stored paths (everything through the last `/`), once
-- per filespace: a version row and its two path indexes then carry a short
-- name instead of the whole path, which was most of the catalog's size.
CREATE TABLE IF NOT EXISTS dirs (
    id           INTEGER PRIMARY KEY,
    filespace_id INTEGER NOT NULL REFERENCES filespaces(id) ON DELETE CASCADE,
    path         TEXT NOT NULL,
    UNIQUE (filespace_id, path)
);

-- One row per stored version; its path is `dirs.path || name`. `manifest` is
-- the concatenation of the 32-byte chunk ids of the content, in order.
-- `extra` is the client's ObjectExtra message (device number, extended
-- attributes and ACLs, hard-link group), protobuf-encoded; empty when none.
CREATE TABLE IF NOT EXISTS objects (
    id             INTEGER PRIMARY KEY,
    object_id      BLOB NOT NULL UNIQUE,
    filespace_id   INTEGER NOT NULL REFERENCES filespaces(id) ON DELETE CASCADE,
    dir_id         INTEGER NOT NULL REFERENCES dirs(id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    kind           INTEGER NOT NULL,
    size           INTEGER NOT NULL,
    mode           INTEGER NOT NULL,
    mtime_ns       INTEGER NOT NULL,
    uid            INTEGER NOT NULL,
    gid            INTEGER NOT NULL,
    link_target    TEXT NOT NULL DEFAULT '',
    backup_ns      INTEGER NOT NULL,
    active         INTEGER NOT NULL,
    deactivated_ns INTEGER NOT NULL DEFAULT 0,
    -- 1: beyond the version limit (VEREXISTS/VERDELETED); invisible, deleted
    -- by the next expiration.
    expiring       INTEGER NOT NULL DEFAULT 0,
    manifest       BLOB NOT NULL,
    extra          BLOB NOT NULL DEFAULT x''
);
CREATE INDEX IF NOT EXISTS objects_by_path ON objects (dir_id, name, backup_ns);
CREATE UNIQUE INDEX IF NOT EXISTS objects_one_active ON objects (dir_id, name) WHERE active = 1;

-- Archive copies (TSM ARCHIVE): a described copy of a file kept until
-- `expires_ns` whatever happens to the file or its backups. Whole paths, as
-- archives are few beside backup versions; `manifest` and `extra` as in
-- `objects`. `node_id` repeats the filespace's node so one index serves a
-- node's listing in path order; removing the filespace removes its archives.
CREATE TABLE IF NOT EXISTS archives (
    id           INTEGER PRIMARY KEY,
    object_id    BLOB NOT NULL UNIQUE,
    node_id      INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    filespace_id INTEGER NOT NULL REFERENCES filespaces(id) ON DELETE CASCADE,
    path         TEXT NOT NULL,
    kind         INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    mode         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    uid          INTEGER NOT NULL,
    gid          INTEGER NOT NULL,
    link_target  TEXT NOT NULL DEFAULT '',
    archived_ns  INTEGER NOT NULL,
    expires_ns   INTEGER NOT NULL,
    description  TEXT NOT NULL,
    manifest     BLOB NOT NULL,
    extra        BLOB NOT NULL DEFAULT x''
);
CREATE INDEX IF NOT EXISTS archives_by_path ON archives (node_id, path, archived_ns, id);
CREATE INDEX IF NOT EXISTS archives_by_expiry ON archives (expires_ns);
CREATE INDEX IF NOT EXISTS archives_by_filespace ON archives (filespace_id);

-- Where each chunk's compressed bytes live. A row exists only after the bytes
-- were fsynced, so a row is a promise that the data is on disk.
-- One row per copy: a chunk is stored at most once per storage pool (a
-- pool is its own deduplication domain, as in TSM), so two nodes whose data
-- goes to different pools each have a copy in theirs. Pool 0 is the
-- server's default pool (`[pool]`); the others are in `pools`. Container
-- numbers are unique across pools.
CREATE TABLE IF NOT EXISTS chunks (
    id         BLOB NOT NULL,
    pool       INTEGER NOT NULL DEFAULT 0,
    container  INTEGER NOT NULL,
    offset     INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len    INTEGER NOT NULL,
    -- The node that first uploaded the chunk (0: none left). Chunk ids are
    -- not secrets (a one-chunk file is named by its hash), so a node may
    -- read, reference or be told of only the chunks it owns: this one, or
    -- one in chunk_sharers for it. Storage stays deduplicated across nodes.
    -- Ownership is of the chunk, not of a copy: a node owns the chunk when
    -- it is the owner of any copy or in chunk_sharers.
    owner      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (id, pool)
) WITHOUT ROWID;

-- Other nodes that proved they hold a chunk (by uploading its bytes) after
-- its first owner did. Rows go with their chunk (the sweep) or their node
-- (remove node).
CREATE TABLE IF NOT EXISTS chunk_sharers (
    chunk   BLOB NOT NULL,
    node_id INTEGER NOT NULL,
    PRIMARY KEY (chunk, node_id)
) WITHOUT ROWID;
-- Chunks an audit found damaged or missing (TSM's damaged extents), kept
-- until a repair or a later audit reading them whole clears them, so an
-- operator can list them with the files they hurt (`query damaged`).
-- container 0: not stored for node_id at all (what `audit node` found
-- missing); such rows are replaced by that node's next full audit.
CREATE TABLE IF NOT EXISTS damaged_chunks (
    id        BLOB PRIMARY KEY,
    container INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    files     TEXT NOT NULL DEFAULT '',
    found_ns  INTEGER NOT NULL,
    node_id   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- Compaction lists a container's chunks from the container's own record
-- headers, so no index by container is kept (it was a tenth of the catalog).
DROP INDEX IF EXISTS chunks_by_container;

-- Named administrators (REGISTER ADMIN). The first, ADMIN, is made at the
-- first start with a random password in DATA_DIR/admin.password.
CREATE TABLE IF NOT EXISTS admins (
    name           TEXT PRIMARY KEY,          -- upper-case
    password_hash  TEXT NOT NULL,             -- argon2id PHC string
    locked         INTEGER NOT NULL DEFAULT 0,
    failed_logons  INTEGER NOT NULL DEFAULT 0,
    registered_ns  INTEGER NOT NULL,
    last_logon_ns  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS actlog (
    id      INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    msg_id  TEXT NOT NULL,
    node    TEXT NOT NULL DEFAULT '',
    peer    TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actlog_by_time ON actlog (time_ns);

-- Partner servers (DEFINE SERVER). This server must present the shared
-- password, so it cannot be hashed: `password` holds it sealed with the key in
-- DATA_DIR/secrets.key, which is not in the catalog (see secrets.rs).
CREATE TABLE IF NOT EXISTS servers (
    name             TEXT PRIMARY KEY,
    address          TEXT NOT NULL,
    password         TEXT NOT NULL,
    guid             TEXT NOT NULL DEFAULT '',  -- learned at the last Hello
    failover_address TEXT NOT NULL DEFAULT '',  -- the partner's SET FAILOVERHLADDRESS
    fingerprint      TEXT NOT NULL DEFAULT ''   -- its pinned TLS certificate (SHA-256)
);

CREATE TABLE IF NOT EXISTS repl_runs (
    id              INTEGER PRIMARY KEY,
    node            TEXT NOT NULL,
    target          TEXT NOT NULL,
    started_ns      INTEGER NOT NULL,
    ended_ns        INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'running',
    objects_sent    INTEGER NOT NULL DEFAULT 0,
    bytes_sent      INTEGER NOT NULL DEFAULT 0,
    chunks_skipped  INTEGER NOT NULL DEFAULT 0,
    objects_deleted INTEGER NOT NULL DEFAULT 0,
    states_updated  INTEGER NOT NULL DEFAULT 0,
    message         TEXT NOT NULL DEFAULT ''
);

-- Nodes being recovered from their replica (`recover node`): while a row is
-- here the node is held in receive mode, a replica of `source`, so no
-- backup and no replication from this server can run for it until the
-- replica's data is back (a run would delete on the replica what this
-- server lost). `restore-db` puts every replicated node here.
CREATE TABLE IF NOT EXISTS recoveries (
    node       TEXT PRIMARY KEY,              -- upper-case node name
    source     TEXT NOT NULL,                 -- the server holding the replica
    started_ns INTEGER NOT NULL,
    -- The node's replication state before it was held ('' for a node this
    -- server did not hold), given back when the hold ends.
    prev_replstate TEXT NOT NULL DEFAULT ''
);

-- Planned role switches (`switch replication`), one row per node, kept on
-- both servers. On the node's old primary the step goes 'draining' (no new
-- sessions; running ones finish), 'frozen' (no writes; the final
-- replication), 'handing_over' (the partner has been asked to take the node
-- over: from here only the partner can say whether it did), 'handed_over'
-- (done: the node is the partner's replica here and its logons are sent
-- there). On the new primary: 'taken' (took the node over from `partner`
-- under `switch_id`).
CREATE TABLE IF NOT EXISTS switches (
    node       TEXT PRIMARY KEY,              -- upper-case node name
    partner    TEXT NOT NULL,                 -- the other server
    switch_id  TEXT NOT NULL,                 -- random, fixed for the switch's life
    step       TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    ended_ns   INTEGER NOT NULL DEFAULT 0
);

-- What this server answered to switches of other servers, by switch id,
-- never overwritten: 'taken' (it took the node over from `partner`; a
-- repeated hand-over of that switch is told so even after the node has
-- moved on), 'fenced' (the old primary cancelled the switch while it was
-- handing over, so a late hand-over of it must be refused, or the node
-- would have two primaries).
CREATE TABLE IF NOT EXISTS switch_answers (
    node       TEXT NOT NULL,
    switch_id  TEXT NOT NULL,
    partner    TEXT NOT NULL,                 -- the old primary
    answer     TEXT NOT NULL CHECK (answer IN ('taken', 'fenced')),
    at_ns      INTEGER NOT NULL,
    PRIMARY KEY (node, switch_id)
);

-- Client schedules (TSM DEFINE SCHEDULE): what to run, and its windows:
-- the k-th starts at start_ns + k * period_secs (period 0: once) and lasts
-- duration_secs; a run must start within its window.
CREATE TABLE IF NOT EXISTS schedules (
    name          TEXT PRIMARY KEY,           -- upper-case
    action        TEXT NOT NULL CHECK (action IN ('incremental', 'selective', 'db-backup', 'command')),
    objects       TEXT NOT NULL,              -- JSON array of strings
    start_ns      INTEGER NOT NULL,
    period_secs   INTEGER NOT NULL,
    duration_secs INTEGER NOT NULL,
    pre_command   TEXT NOT NULL DEFAULT '',
    post_command  TEXT NOT NULL DEFAULT '',
    defined_ns    INTEGER NOT NULL
);

-- Which nodes run which schedule (TSM DEFINE ASSOCIATION).
CREATE TABLE IF NOT EXISTS associations (
    schedule TEXT NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    node     TEXT NOT NULL,
    PRIMARY KEY (schedule, node)
);

-- What clients reported of their scheduled runs, one row per window
-- (`query event` adds the runs nobody reported: missed, or still to come).
CREATE TABLE IF NOT EXISTS schedule_events (
    schedule        TEXT NOT NULL,
    node            TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('started', 'completed', 'failed')),
    exit_code       INTEGER NOT NULL DEFAULT 0,
    message         TEXT NOT NULL DEFAULT '',
    started_ns      INTEGER NOT NULL DEFAULT 0,
    ended_ns        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (schedule, node, window_start_ns)
);
CREATE INDEX IF NOT EXISTS schedule_events_by_window ON schedule_events (window_start_ns);
