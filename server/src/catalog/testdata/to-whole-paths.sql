-- Turns a catalog made with the current schema into one from before
-- directories had their own table (whole paths in `objects`): the starting
-- point of the migration test.
DROP INDEX objects_by_path;
DROP INDEX objects_one_active;
DROP TABLE objects;
DROP TABLE dirs;

-- One row per stored version. `manifest` is the concatenation of the 32-byte
-- chunk ids of the content, in order.
CREATE TABLE IF NOT EXISTS objects (
    id             INTEGER PRIMARY KEY,
    object_id      BLOB NOT NULL UNIQUE,
    filespace_id   INTEGER NOT NULL REFERENCES filespaces(id) ON DELETE CASCADE,
    path           TEXT NOT NULL,
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
    manifest       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_by_path ON objects (filespace_id, path, backup_ns);
CREATE UNIQUE INDEX IF NOT EXISTS objects_one_active ON objects (filespace_id, path) WHERE active = 1;
