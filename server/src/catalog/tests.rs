//! Catalog tests on real SQLite files: version paging over the directory
//! table, and moving an old whole-path catalog to it.

use rusqlite::{Connection, params};

use super::{Catalog, ExpiredVersion};
use crate::model::{NewVersion, ObjectAttrs, ObjectKind, Policy, VersionQuery};

pub(crate) fn attrs(path: &str, kind: ObjectKind) -> ObjectAttrs {
    ObjectAttrs {
        path: path.to_string(),
        kind,
        size: 0,
        mode: 0o644,
        mtime_ns: 1,
        uid: 0,
        gid: 0,
        link_target: String::new(),
        extra: Vec::new(),
    }
}

fn version(path: &str) -> NewVersion {
    let kind = if path.ends_with(".d") {
        ObjectKind::Directory
    } else {
        ObjectKind::File
    };
    NewVersion {
        attrs: attrs(path, kind),
        chunks: Vec::new(),
    }
}

/// Every version matching `query`, read `page` rows at a time.
fn all_pages(
    catalog: &Catalog,
    node: i64,
    query: &VersionQuery,
    page: usize,
) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..1000 {
        let got = catalog
            .query_versions(node, query, after.as_ref(), page)
            .expect("query");
        out.extend(
            got.versions
                .iter()
                .map(|v| (v.attrs.path.clone(), v.backup_ns)),
        );
        match got.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
    panic!("paging did not end");
}

/// Registers one more node; its id.
fn register(catalog: &Catalog, name: &str) -> i64 {
    catalog
        .register_node(name, "hash", 1)
        .expect("register")
        .expect("new node")
        .id
}

fn new_catalog(dir: &tempfile::TempDir) -> (Catalog, i64) {
    let catalog = Catalog::open(&dir.path().join("catalog.db"), Policy::default()).expect("open");
    let node = catalog
        .register_node("N1", "hash", 1)
        .expect("register")
        .expect("new node")
        .id;
    (catalog, node)
}

/// `n` symbolic links `/big/lNN`, each with a 1 MiB target.
fn big_symlinks(n: usize) -> Vec<NewVersion> {
    let big = "x".repeat(1024 * 1024);
    (0..n)
        .map(|i| {
            let mut v = version(&format!("/big/l{i:02}"));
            v.attrs.kind = ObjectKind::Symlink;
            v.attrs.link_target = big.clone();
            v
        })
        .collect()
}

#[test]
fn a_page_of_large_versions_ends_by_bytes_and_the_next_goes_on_after_it() {
    // A node decides how large its versions are; a page of 512 rows of
    // many MiB each would be held in memory at once.
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, node) = new_catalog(&dir);
    let versions = big_symlinks(20);
    catalog
        .commit_objects(node, "/", &versions, &[], 100)
        .expect("commit");
    let query = VersionQuery {
        filespace: "/".into(),
        path_prefix: "/big".into(),
        ..VersionQuery::default()
    };
    let first = catalog
        .query_versions(node, &query, None, 512)
        .expect("query");
    assert!(
        (1..=9).contains(&first.versions.len()),
        "{} rows of 1 MiB in one page",
        first.versions.len()
    );
    assert!(
        first.next.is_some(),
        "a page ended by bytes says more follow"
    );
    let all: Vec<String> = all_pages(&catalog, node, &query, 512)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("/big/l{i:02}")).collect();
    assert_eq!(all, expected, "every version once, in order");
}

#[test]
fn a_page_of_large_archive_copies_ends_by_bytes_and_the_next_goes_on_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, node) = new_catalog(&dir);
    let versions = big_symlinks(20);
    catalog
        .commit_archive(node, "/", &versions, "big", 100)
        .expect("archive");
    let query = crate::model::ArchiveQuery {
        path_prefix: "/big".into(),
        description: String::new(),
        with_chunks: true,
    };
    let mut after = None;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let page = catalog
            .query_archives(node, &query, after.as_ref(), 512)
            .expect("query");
        assert!(
            page.copies.len() <= 8,
            "{} copies of 1 MiB in one page",
            page.copies.len()
        );
        seen.extend(page.copies.iter().map(|c| c.version.attrs.path.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..20).map(|i| format!("/big/l{i:02}")).collect();
    assert_eq!(seen, expected, "every copy once, in order");
}

#[test]
fn a_password_hash_is_replaced_only_over_the_one_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, _) = new_catalog(&dir);
    // An administrator reset it after the old password was checked.
    catalog
        .update_node("N1", None, Default::default(), Some("reset-by-admin"))
        .expect("reset");
    assert!(
        !catalog
            .replace_password_hash("N1", "hash", "node's new")
            .unwrap()
    );
    let node = catalog.node("N1").unwrap().unwrap();
    assert_eq!(node.password_hash, "reset-by-admin", "the reset is kept");
    assert!(
        catalog
            .replace_password_hash("N1", "reset-by-admin", "node's new")
            .unwrap()
    );
    assert_eq!(
        catalog.node("N1").unwrap().unwrap().password_hash,
        "node's new"
    );
    assert!(!catalog.replace_password_hash("NOBODY", "x", "y").unwrap());
}

#[test]
fn pages_return_each_version_once_whatever_the_page_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, node) = new_catalog(&dir);
    let paths = [
        "/d.d",
        "/d.d/a",
        "/d.d/b",
        "/d.d/b-x",
        "/d.d/b0",
        "/d.d/b/c",
        "/d.d/b/c/e",
        "/d.d0",
        "/d.dx/y",
        "/e",
    ];
    let versions: Vec<NewVersion> = paths.iter().map(|p| version(p)).collect();
    catalog
        .commit_objects(node, "/", &versions, &[], 100)
        .expect("first");
    // Second versions of two paths (the first ones turn inactive); one gone.
    let again = vec![version("/d.d/b"), version("/d.d/b/c/e")];
    catalog
        .commit_objects(node, "/", &again, &["/d.d/a".to_string()], 200)
        .expect("second");

    let all = VersionQuery {
        filespace: "/".into(),
        path_prefix: "/d.d".into(),
        include_inactive: true,
        ..VersionQuery::default()
    };
    let whole = all_pages(&catalog, node, &all, 1000);
    let expected_paths = [
        "/d.d",
        "/d.d/a",
        "/d.d/b",
        "/d.d/b",
        "/d.d/b-x",
        "/d.d/b0",
        "/d.d/b/c",
        "/d.d/b/c/e",
        "/d.d/b/c/e",
    ];
    let got: Vec<&str> = whole.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        got, expected_paths,
        "the prefix first, then each directory's entries"
    );
    assert!(whole[2].1 < whole[3].1, "a path's versions by backup time");
    for page in 1..=whole.len() {
        assert_eq!(
            all_pages(&catalog, node, &all, page),
            whole,
            "page size {page}"
        );
    }

    let active = VersionQuery {
        include_inactive: false,
        ..all.clone()
    };
    let got: Vec<String> = all_pages(&catalog, node, &active, 2)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        got,
        [
            "/d.d",
            "/d.d/b",
            "/d.d/b-x",
            "/d.d/b0",
            "/d.d/b/c",
            "/d.d/b/c/e"
        ]
    );

    let as_of_first = VersionQuery {
        point_in_time_ns: Some(150),
        ..all.clone()
    };
    let got = all_pages(&catalog, node, &as_of_first, 3);
    assert_eq!(got.len(), 7, "{got:?}");
    assert!(got.iter().all(|(_, t)| *t == 100));

    let everything = VersionQuery {
        path_prefix: "/".into(),
        ..active.clone()
    };
    assert_eq!(all_pages(&catalog, node, &everything, 4).len(), 9);
    let one_file = VersionQuery {
        path_prefix: "/d.d/b-x".into(),
        ..active.clone()
    };
    assert_eq!(
        all_pages(&catalog, node, &one_file, 1),
        [("/d.d/b-x".to_string(), 100)]
    );
}

#[test]
fn expiring_every_version_of_a_directory_removes_its_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, node) = new_catalog(&dir);
    catalog
        .commit_objects(
            node,
            "/",
            &[version("/gone/f"), version("/kept/f")],
            &[],
            100,
        )
        .expect("commit");
    // Expiration deletes inactive versions only.
    catalog
        .commit_objects(node, "/", &[], &["/gone/f".to_string()], 200)
        .expect("deactivate");
    let versions = |sql: &str| -> Vec<ExpiredVersion> {
        let conn = catalog.conn();
        let mut stmt = conn.prepare(sql).expect("prepare");
        stmt.query_map([], |r| {
            Ok(ExpiredVersion {
                row: r.get(0)?,
                object_id: r.get(1)?,
                node,
            })
        })
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
    };
    let gone = versions(
        "SELECT o.id, o.object_id FROM objects o JOIN dirs d ON d.id = o.dir_id WHERE d.path = '/gone/'",
    );
    // A row id found earlier and since taken by another version is left.
    let reused = ExpiredVersion {
        object_id: vec![0; 16],
        ..gone[0].clone()
    };
    assert_eq!(catalog.delete_versions(&[reused]).expect("delete"), 0);
    assert_eq!(catalog.delete_versions(&gone).expect("delete"), 1);
    let kept_active = versions("SELECT id, object_id FROM objects");
    assert_eq!(
        catalog.delete_versions(&kept_active).expect("delete"),
        0,
        "an active version is never deleted by expiration"
    );
    let dirs: Vec<String> = {
        let conn = catalog.conn();
        let mut stmt = conn
            .prepare("SELECT path FROM dirs ORDER BY path")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    assert_eq!(dirs, ["/kept/"]);
}

#[test]
fn a_whole_path_catalog_is_moved_to_directory_rows_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("catalog.db");
    {
        let conn = Connection::open(&file).expect("open old");
        conn.execute_batch(include_str!("schema.sql"))
            .expect("schema");
        conn.execute_batch(include_str!("testdata/to-whole-paths.sql"))
            .expect("old objects table");
        conn.execute(
            "INSERT INTO nodes (id, name, password_hash, registered_ns) VALUES (1, 'N1', 'h', 1)",
            [],
        )
        .expect("node");
        conn.execute(
            "INSERT INTO filespaces (id, node_id, name) VALUES (7, 1, '/data')",
            [],
        )
        .expect("filespace");
        for (id, path, backup_ns, active) in [
            (10, "/data", 100, 1),
            (11, "/data/a.txt", 100, 0),
            (12, "/data/a.txt", 200, 1),
            (13, "/data/sub/b.txt", 100, 1),
        ] {
            conn.execute(
                "INSERT INTO objects (id, object_id, filespace_id, path, kind, size, mode, mtime_ns,
                   uid, gid, backup_ns, active, manifest)
                 VALUES (?1, ?2, 7, ?3, 1, 5, 420, 1, 0, 0, ?4, ?5, x'')",
                params![id, [id as u8; 16].as_slice(), path, backup_ns, active],
            )
            .expect("object");
        }
    }
    let catalog = Catalog::open(&file, Policy::default()).expect("open migrates");
    let query = VersionQuery {
        filespace: "/data".into(),
        path_prefix: "/data".into(),
        include_inactive: true,
        ..VersionQuery::default()
    };
    let page = catalog.query_versions(1, &query, None, 100).expect("query");
    let got: Vec<(String, i64, bool, u8)> = page
        .versions
        .iter()
        .map(|v| {
            (
                v.attrs.path.clone(),
                v.backup_ns,
                v.active,
                v.object_id.0[0],
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/data".to_string(), 100, true, 10),
            ("/data/a.txt".to_string(), 100, false, 11),
            ("/data/a.txt".to_string(), 200, true, 12),
            ("/data/sub/b.txt".to_string(), 100, true, 13),
        ]
    );
    let conn = catalog.conn();
    let old_left: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'objects_whole_paths'",
            [],
            |r| r.get(0),
        )
        .expect("schema");
    assert_eq!(old_left, 0);
    drop(conn);
    // Opening again finds nothing to move and changes nothing.
    drop(catalog);
    let catalog = Catalog::open(&file, Policy::default()).expect("reopen");
    assert_eq!(
        catalog
            .query_versions(1, &query, None, 100)
            .expect("query")
            .versions
            .len(),
        4
    );
}

#[test]
fn a_catalog_without_the_extra_column_gets_it_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("catalog.db");
    let (catalog, node) = new_catalog(&dir);
    catalog
        .commit_objects(node, "/", &[version("/old")], &[], 100)
        .expect("commit");
    drop(catalog);
    Connection::open(&file)
        .expect("open")
        .execute_batch("ALTER TABLE objects DROP COLUMN extra")
        .expect("drop the column, as an older server's catalog lacks it");
    let catalog = Catalog::open(&file, Policy::default()).expect("open adds the column");
    let mut with_extra = version("/new");
    with_extra.attrs.extra = vec![0x18, 0x05];
    catalog
        .commit_objects(node, "/", &[with_extra], &[], 200)
        .expect("commit");
    let query = VersionQuery {
        filespace: "/".into(),
        path_prefix: "/".into(),
        ..VersionQuery::default()
    };
    let page = catalog
        .query_versions(node, &query, None, 10)
        .expect("query");
    let got: Vec<(String, Vec<u8>)> = page
        .versions
        .into_iter()
        .map(|v| (v.attrs.path, v.attrs.extra))
        .collect();
    assert_eq!(
        got,
        [
            ("/new".to_string(), vec![0x18, 0x05]),
            ("/old".to_string(), Vec::new())
        ]
    );
}

#[test]
fn names_with_escape_range_characters_are_rewritten_once_in_an_old_catalog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("catalog.db");
    let (catalog, node) = new_catalog(&dir);
    let literal = "/d\u{10FF41}/x\u{10FFFF}";
    catalog
        .commit_objects(node, "/", &[version(literal), version("/plain")], &[], 100)
        .expect("commit");
    drop(catalog);
    Connection::open(&file)
        .expect("open")
        .execute_batch("ALTER TABLE objects DROP COLUMN extra")
        .expect("as a server from before byte names left it");
    let catalog = Catalog::open(&file, Policy::default()).expect("open rewrites");
    let query = VersionQuery {
        filespace: "/".into(),
        path_prefix: "/".into(),
        ..VersionQuery::default()
    };
    let paths: Vec<String> = catalog
        .query_versions(node, &query, None, 10)
        .expect("query")
        .versions
        .into_iter()
        .map(|v| v.attrs.path)
        .collect();
    let encoded = tandem_proto::names::encode_bytes(literal.as_bytes());
    assert!(paths.contains(&encoded), "{paths:?}");
    assert!(paths.contains(&"/plain".to_string()));
    assert_eq!(
        tandem_proto::names::decode_bytes(&encoded),
        literal.as_bytes()
    );
}

fn stored_at(offset: u64) -> crate::model::ChunkLocation {
    crate::model::ChunkLocation {
        pool: crate::model::DEFAULT_POOL,
        container: 1,
        offset,
        stored_len: 10,
        raw_len: 20,
    }
}

fn with_chunk(path: &str, chunk: tandem_proto::ChunkId) -> NewVersion {
    let mut v = version(path);
    v.chunks = vec![chunk];
    v
}

#[test]
fn a_chunk_belongs_only_to_the_nodes_that_uploaded_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, alice) = new_catalog(&dir);
    let bob = register(&catalog, "BOB");
    let pin = tandem_proto::ChunkId([7; 32]);
    let stored = catalog
        .insert_chunks(bob, &[(pin, stored_at(0))], &[pin])
        .expect("bob uploads");
    assert_eq!(stored, 1);
    // Stored once, but for Alice it is missing, unreadable and uncommittable.
    assert!(
        catalog
            .missing_chunks(0, &[pin])
            .expect("missing")
            .is_empty()
    );
    assert_eq!(catalog.unowned_chunks(alice, 0, &[pin]).expect("q"), [pin]);
    assert_eq!(catalog.unowned_chunks(bob, 0, &[pin]).expect("q"), []);
    assert!(catalog.owned_chunk_locations(alice, &[pin]).expect("q")[0].is_none());
    assert!(catalog.owned_chunk_locations(bob, &[pin]).expect("q")[0].is_some());
    let refused = catalog
        .commit_objects(alice, "/", &[with_chunk("/pin", pin)], &[], 10)
        .expect_err("alice may not reference bob's chunk");
    assert!(
        refused.to_string().contains("not stored for this node"),
        "{refused}"
    );
    // Uploading the bytes proves Alice holds them: no second copy is indexed.
    let stored = catalog
        .insert_chunks(alice, &[(pin, stored_at(100))], &[pin])
        .expect("alice uploads");
    assert_eq!(stored, 0);
    assert_eq!(
        catalog.chunk_locations(&[pin]).expect("q")[0].map(|l| l.offset),
        Some(0)
    );
    assert_eq!(catalog.unowned_chunks(alice, 0, &[pin]).expect("q"), []);
    catalog
        .commit_objects(alice, "/", &[with_chunk("/pin", pin)], &[], 10)
        .expect("now alice may");
    // The sweep takes the sharers with the chunk.
    catalog.delete_chunks(&[pin]).expect("sweep");
    catalog
        .insert_chunks(bob, &[(pin, stored_at(200))], &[pin])
        .expect("stored again");
    assert_eq!(catalog.unowned_chunks(alice, 0, &[pin]).expect("q"), [pin]);
}

#[test]
fn a_removed_node_leaves_no_ownership_and_no_id_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, _) = new_catalog(&dir);
    let bob = register(&catalog, "BOB");
    let (first, shared) = (
        tandem_proto::ChunkId([1; 32]),
        tandem_proto::ChunkId([2; 32]),
    );
    catalog
        .insert_chunks(bob, &[(first, stored_at(0))], &[first])
        .expect("first owner");
    let n1 = catalog.node("N1").expect("q").expect("n1").id;
    catalog
        .insert_chunks(n1, &[(shared, stored_at(10))], &[shared])
        .expect("n1 first");
    catalog
        .insert_chunks(bob, &[], &[shared])
        .expect("bob shares");
    assert_eq!(catalog.remove_node("BOB").expect("remove"), Some(0));
    let carol = register(&catalog, "CAROL");
    assert!(carol > bob, "a removed node's id is never handed out again");
    assert_eq!(
        catalog
            .unowned_chunks(carol, 0, &[first, shared])
            .expect("q"),
        [first, shared]
    );
}

#[test]
fn an_old_catalog_gives_its_nodes_the_chunks_their_versions_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("catalog.db");
    let (catalog, node) = new_catalog(&dir);
    let (kept, loose) = (
        tandem_proto::ChunkId([3; 32]),
        tandem_proto::ChunkId([4; 32]),
    );
    catalog
        .insert_chunks(
            node,
            &[(kept, stored_at(0)), (loose, stored_at(10))],
            &[kept, loose],
        )
        .expect("upload");
    catalog
        .commit_objects(node, "/", &[with_chunk("/f", kept)], &[], 10)
        .expect("commit");
    drop(catalog);
    Connection::open(&file)
        .expect("open")
        .execute_batch(
            "CREATE TABLE old (id BLOB PRIMARY KEY, container INTEGER NOT NULL,
               offset INTEGER NOT NULL, stored_len INTEGER NOT NULL, raw_len INTEGER NOT NULL)
               WITHOUT ROWID;
             INSERT INTO old SELECT id, container, offset, stored_len, raw_len FROM chunks;
             DROP TABLE chunks; ALTER TABLE old RENAME TO chunks; DROP TABLE chunk_sharers;
             DELETE FROM server_info WHERE key = 'chunk_owners_granted';",
        )
        .expect("back to a catalog from before ownership");
    let catalog = Catalog::open(&file, Policy::default()).expect("open migrates");
    assert_eq!(
        catalog.unowned_chunks(node, 0, &[kept, loose]).expect("q"),
        [loose]
    );
    drop(catalog);
    // A start cut short after the column was added but before the grant
    // committed: the next open grants.
    Connection::open(&file)
        .expect("open")
        .execute_batch(
            "UPDATE chunks SET owner = 0; DELETE FROM chunk_sharers;
             DELETE FROM server_info WHERE key = 'chunk_owners_granted';",
        )
        .expect("as if the grant never committed");
    let catalog = Catalog::open(&file, Policy::default()).expect("open grants again");
    assert_eq!(
        catalog.unowned_chunks(node, 0, &[kept, loose]).expect("q"),
        [loose]
    );
}

#[test]
fn reads_neither_wait_for_the_writer_nor_see_its_open_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, node) = new_catalog(&dir);
    let kept = tandem_proto::ChunkId([1; 32]);
    catalog
        .insert_chunks(node, &[(kept, stored_at(0))], &[kept])
        .expect("store");
    // The writer is busy: its lock is held, inside an open transaction that
    // has written a second chunk (as a long commit would be).
    let writer = catalog.conn();
    writer.execute_batch("BEGIN IMMEDIATE").expect("begin");
    let pending = tandem_proto::ChunkId([2; 32]);
    writer
        .execute(
            "INSERT INTO chunks (id, container, offset, stored_len, raw_len, owner)
             VALUES (?1, 1, 50, 10, 20, ?2)",
            params![pending.as_slice(), node],
        )
        .expect("insert");
    // Without the reader connections this would deadlock on the writer's lock.
    assert_eq!(
        catalog
            .unowned_chunks(node, 0, &[kept, pending])
            .expect("read"),
        [pending],
        "committed data only"
    );
    assert!(catalog.owned_chunk_locations(node, &[kept]).expect("read")[0].is_some());
    assert_eq!(catalog.list_filespaces(node).expect("read").len(), 0);
    writer.execute_batch("COMMIT").expect("commit");
    drop(writer);
    assert!(
        catalog
            .unowned_chunks(node, 0, &[pending])
            .expect("read")
            .is_empty()
    );
}

#[test]
fn archive_pages_cover_the_prefix_once_and_copies_expire_by_retver() {
    use crate::model::ArchiveQuery;
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, node) = new_catalog(&dir);
    // Copies without content: no chunks to own.
    let paths = ["/a", "/a/x", "/a/y", "/a-b", "/a0", "/ab/z"];
    let versions: Vec<_> = paths.iter().map(|p| version(p)).collect();
    for (description, at) in [("first", 10), ("second", 20)] {
        catalog
            .commit_archive(node, "/", &versions, description, at)
            .expect("archive");
    }
    for page in [1, 2, 3, 100] {
        let query = ArchiveQuery {
            path_prefix: "/a".into(),
            ..ArchiveQuery::default()
        };
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..100 {
            let got = catalog
                .query_archives(node, &query, after.as_ref(), page)
                .expect("query");
            seen.extend(
                got.copies
                    .iter()
                    .map(|c| (c.version.attrs.path.clone(), c.description.clone())),
            );
            match got.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let want: Vec<(String, String)> = ["/a", "/a/x", "/a/y"]
            .iter()
            .flat_map(|p| {
                [
                    (p.to_string(), "first".to_string()),
                    (p.to_string(), "second".to_string()),
                ]
            })
            .collect();
        assert_eq!(seen, want, "page size {page}");
    }
    let second = ArchiveQuery {
        path_prefix: "/".into(),
        description: "second".into(),
        with_chunks: false,
    };
    let got = catalog
        .query_archives(node, &second, None, 100)
        .expect("query");
    assert_eq!(got.copies.len(), paths.len());
    // Another node sees none of them.
    let other = catalog
        .register_node("N2", "hash", 1)
        .expect("register")
        .expect("new node")
        .id;
    let none = catalog
        .query_archives(other, &second, None, 100)
        .expect("query");
    assert!(none.copies.is_empty());
    // RETVER (365 days by default) sets the expiry; expiration finds them then.
    assert!(
        catalog
            .expired_archives(10 + 364 * super::DAY_NS)
            .expect("expired")
            .is_empty()
    );
    let due = catalog
        .expired_archives(20 + 365 * super::DAY_NS)
        .expect("expired");
    assert_eq!(due.len(), 2 * paths.len());
    assert_eq!(
        catalog.delete_archives(&due).expect("delete"),
        due.len() as u64
    );
}

#[test]
fn a_restored_catalog_holds_replicated_nodes_for_recovery_until_it_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, _) = new_catalog(&dir);
    for name in ["SRC", "REPLICA", "FIRST", "LOCAL"] {
        catalog.register_node(name, "hash", 1).expect("register");
    }
    catalog
        .set_setting(super::Setting::ReplServer, "SECONDARY")
        .expect("replserver");
    let raw = Connection::open(dir.path().join("catalog.db")).expect("open");
    // SRC was replicated (to SECONDARY, replication since disabled); FIRST
    // has replication enabled but no completed run in the copy; LOCAL was
    // never replicated; REPLICA is another server's.
    raw.execute_batch(
        "UPDATE nodes SET replstate = 'disabled', replmode = 'send', repl_server = 'SECONDARY' WHERE name = 'SRC';
         UPDATE nodes SET replstate = 'enabled', replmode = 'receive', repl_server = 'OTHER' WHERE name = 'REPLICA';
         UPDATE nodes SET replstate = 'enabled' WHERE name = 'FIRST';",
    )
    .expect("set modes");
    let held = catalog.hold_replicated_nodes_for_recovery(5).expect("hold");
    assert_eq!(
        held,
        [
            ("FIRST".to_string(), "SECONDARY".to_string()),
            ("SRC".to_string(), "SECONDARY".to_string())
        ]
    );
    let node = |name: &str| catalog.node(name).expect("node").expect("exists");
    assert!(node("SRC").is_replica(), "held in receive mode");
    assert_eq!(node("SRC").repl_server, "SECONDARY");
    assert!(!node("LOCAL").is_replica());
    assert_eq!(
        catalog.recovery_of("SRC").expect("read").as_deref(),
        Some("SECONDARY")
    );
    // A re-run from the same server is fine, from another one refused; a
    // replica of another server, or a node of this server's own that was
    // not lost, cannot be recovered here; an absent node can.
    catalog
        .begin_recovery("SRC", "SECONDARY", 6)
        .expect("re-run");
    assert!(catalog.begin_recovery("SRC", "THIRD", 6).is_err());
    assert!(catalog.begin_recovery("REPLICA", "SECONDARY", 6).is_err());
    let own = catalog.begin_recovery("LOCAL", "SECONDARY", 6).unwrap_err();
    assert!(own.to_string().contains("nothing to recover"), "{own}");
    catalog
        .begin_recovery("GONE", "SECONDARY", 6)
        .expect("absent node");
    assert!(catalog.forget_recovery_of_absent("GONE").expect("forget"));
    // The end makes SRC this server's own again, replicated to its source,
    // with the replication state it had; FIRST, of which the replica server
    // holds nothing, is released as it was.
    assert!(catalog.end_recovery("SRC", "SECONDARY", 7).expect("end"));
    assert!(!node("SRC").is_replica());
    assert_eq!(node("SRC").replstate.to_string(), "disabled");
    assert_eq!(catalog.recovery_of("SRC").expect("read"), None);
    assert!(!catalog.end_recovery("SRC", "SECONDARY", 8).expect("again"));
    assert!(
        catalog
            .release_unreplicated("FIRST", "SECONDARY")
            .expect("release")
    );
    assert!(!node("FIRST").is_replica());
    assert_eq!(node("FIRST").replstate.to_string(), "enabled");
    assert_eq!(node("FIRST").repl_server, "");
}

#[test]
fn a_switch_moves_a_node_between_two_catalogs_and_a_cancelled_one_stays_fenced() {
    use crate::model::SwitchStep;
    let dirs = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    // PRIMARY holds N (replicated to SECONDARY) and M; SECONDARY their
    // replicas (empty, like the nodes), and R, a replica of a third server.
    let (old, _) = new_catalog(&dirs.0);
    let (new, _) = new_catalog(&dirs.1);
    for name in ["N", "M"] {
        old.register_node(name, "hash", 1).expect("register");
        new.prepare_replica(name, "hash", false, "PRIMARY", 1)
            .expect("replica");
    }
    new.prepare_replica("R", "hash", false, "THIRD", 1)
        .expect("replica");
    let raw = Connection::open(dirs.0.path().join("catalog.db")).expect("open");
    raw.execute_batch(
        "UPDATE nodes SET replstate = 'enabled', replmode = 'send', repl_server = 'SECONDARY'",
    )
    .expect("modes");
    let id = "0123456789abcdef0123456789abcdef";

    // Old primary: draining, then a re-run finds the same switch.
    let started = old.begin_switch("N", "SECONDARY", id, 2).expect("begin");
    assert_eq!(started.step, SwitchStep::Draining);
    let again = old
        .begin_switch("N", "SECONDARY", "ffffffffffffffffffffffffffffffff", 3)
        .expect("re-run");
    assert_eq!(again.switch_id, id, "a re-run goes on with the same switch");
    // Steps move only from the step they are expected in.
    assert!(
        !old.set_switch_step("N", id, SwitchStep::Frozen, SwitchStep::HandingOver)
            .expect("step")
    );
    assert!(
        old.set_switch_step("N", id, SwitchStep::Draining, SwitchStep::Frozen)
            .expect("step")
    );
    // Frozen: the node's writes are refused inside their own transaction.
    let node_id = old.node("N").expect("node").expect("exists").id;
    let refused = old
        .commit_objects(node_id, "/fs", &[version("/fs/a")], &[], 3)
        .unwrap_err();
    assert!(
        refused.to_string().contains("switched to server SECONDARY"),
        "{refused}"
    );
    assert!(
        old.set_switch_step("N", id, SwitchStep::Frozen, SwitchStep::HandingOver)
            .expect("step")
    );
    // An undo from a step the switch is not in changes nothing.
    assert!(!old.undo_switch("N", id, SwitchStep::Frozen).expect("undo"));
    // Another server may not take it over, nor a node that is not a
    // replica, nor a replica that does not hold what the source holds.
    assert!(new.take_over("N", "THIRD", id, 0, 4).is_err());
    assert!(new.take_over("R", "PRIMARY", id, 0, 4).is_err());
    assert!(new.take_over("ABSENT", "PRIMARY", id, 0, 4).is_err());
    let short = new.take_over("N", "PRIMARY", id, 7, 4).unwrap_err();
    assert!(short.to_string().contains("not whole"), "{short}");
    // The new primary takes it over once; a repeat says so.
    assert!(!new.take_over("N", "PRIMARY", id, 0, 5).expect("take over"));
    assert!(new.take_over("N", "PRIMARY", id, 0, 6).expect("repeat"));
    let on_new = new.node("N").expect("node").expect("exists");
    assert!(!on_new.is_replica());
    assert_eq!(on_new.repl_server, "PRIMARY");
    assert_eq!(
        new.setting(super::Setting::ReplServer)
            .expect("read")
            .as_deref(),
        Some("PRIMARY"),
        "the new primary replicates to the old one"
    );
    // Too late to abandon it; the old primary finishes instead.
    assert!(matches!(
        new.abandon_take_over("N", "PRIMARY", id, 7),
        Err(crate::error::ServerError::AlreadyExists(_))
    ));
    old.complete_handover("N", id, 8).expect("finish");
    let on_old = old.node("N").expect("node").expect("exists");
    assert!(on_old.is_replica());
    assert_eq!(on_old.repl_server, "SECONDARY");
    assert_eq!(
        old.switch_of("N").expect("read").map(|r| r.step),
        Some(SwitchStep::HandedOver)
    );
    // A re-run finds it switched.
    let done = old
        .begin_switch("N", "SECONDARY", "11111111111111111111111111111111", 9)
        .expect("already switched");
    assert_eq!(done.step, SwitchStep::HandedOver);
    // Even after the new primary starts a switch of its own, the answer to
    // the first one stays "taken", never "not mine" (which would undo it).
    new.begin_switch("N", "PRIMARY", "44444444444444444444444444444444", 10)
        .expect("switch back");
    assert!(
        new.take_over("N", "PRIMARY", id, 0, 11)
            .expect("still taken")
    );
    // A node that is the new primary's own by other means is not a "no".
    assert!(matches!(
        new.take_over("N", "PRIMARY", "55555555555555555555555555555555", 0, 12),
        Err(crate::error::ServerError::AlreadyExists(_))
    ));

    // M: cancelled while handing over. The new primary fences that switch
    // and refuses a late take-over of it, but not a new switch.
    let m_id = "22222222222222222222222222222222";
    old.begin_switch("M", "SECONDARY", m_id, 10).expect("begin");
    old.set_switch_step("M", m_id, SwitchStep::Draining, SwitchStep::Frozen)
        .expect("step");
    old.set_switch_step("M", m_id, SwitchStep::Frozen, SwitchStep::HandingOver)
        .expect("step");
    // Only the node's source may fence it.
    assert!(new.abandon_take_over("M", "THIRD", m_id, 11).is_err());
    new.abandon_take_over("M", "PRIMARY", m_id, 11)
        .expect("fence");
    assert!(
        old.undo_switch("M", m_id, SwitchStep::HandingOver)
            .expect("undo")
    );
    assert!(new.take_over("M", "PRIMARY", m_id, 0, 12).is_err());
    assert!(new.node("M").expect("node").expect("exists").is_replica());
    assert!(old.switch_of("M").expect("read").is_none());
    let fresh = "33333333333333333333333333333333";
    old.begin_switch("M", "SECONDARY", fresh, 13)
        .expect("new switch");
    assert!(
        !new.take_over("M", "PRIMARY", fresh, 0, 14)
            .expect("take over")
    );
}

#[test]
fn a_switch_needs_all_data_replication_and_no_archive_copies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, _) = new_catalog(&dir);
    for name in ["ACTIVE", "ARCHIVED"] {
        catalog.register_node(name, "hash", 1).expect("register");
    }
    let raw = Connection::open(dir.path().join("catalog.db")).expect("open");
    raw.execute_batch(
        "UPDATE nodes SET replstate = 'enabled', replmode = 'send', repl_server = 'SECONDARY';
         UPDATE nodes SET replrule = 'active_data' WHERE name = 'ACTIVE';",
    )
    .expect("modes");
    let id = "0123456789abcdef0123456789abcdef";
    let err = catalog
        .begin_switch("ACTIVE", "SECONDARY", id, 2)
        .unwrap_err();
    assert!(err.to_string().contains("all_data"), "{err}");
    let node_id = catalog.node("ARCHIVED").expect("node").expect("exists").id;
    catalog
        .commit_archive(node_id, "/fs", &[version("/fs/a")], "keep", 2)
        .expect("archive");
    let err = catalog
        .begin_switch("ARCHIVED", "SECONDARY", id, 3)
        .unwrap_err();
    assert!(err.to_string().contains("archive copies"), "{err}");
    assert!(catalog.switch_of("ARCHIVED").expect("read").is_none());
}

#[test]
fn a_schedules_table_from_before_db_backup_is_widened_with_its_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("catalog.db");
    {
        let old = Connection::open(&file).expect("create");
        old.execute_batch(
            "CREATE TABLE schedules (
                 name TEXT PRIMARY KEY,
                 action TEXT NOT NULL CHECK (action IN ('incremental', 'selective', 'command')),
                 objects TEXT NOT NULL, start_ns INTEGER NOT NULL,
                 period_secs INTEGER NOT NULL, duration_secs INTEGER NOT NULL,
                 pre_command TEXT NOT NULL DEFAULT '', post_command TEXT NOT NULL DEFAULT '',
                 defined_ns INTEGER NOT NULL);
             CREATE TABLE associations (
                 schedule TEXT NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
                 node TEXT NOT NULL, PRIMARY KEY (schedule, node));
             INSERT INTO schedules VALUES ('DAILY', 'incremental', '[\"/data\"]', 1, 86400, 3600, '', '', 1);
             INSERT INTO associations VALUES ('DAILY', 'ALICE');",
        )
        .expect("old tables");
    }
    let catalog = Catalog::open(&file, Policy::default()).expect("open widens");
    drop(catalog);
    let conn = Connection::open(&file).expect("reopen");
    conn.execute(
        "INSERT INTO schedules VALUES ('DBS', 'db-backup', '[\"sqlite:/a.db\"]', 1, 60, 30, '', '', 1)",
        [],
    )
    .expect("a db-backup schedule fits now");
    let kept: i64 = conn
        .query_row(
            "SELECT count(*) FROM associations WHERE schedule = 'DAILY'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(kept, 1, "the association survived the rebuild");
    let bad = conn.execute(
        "INSERT INTO schedules VALUES ('X', 'restore', '[]', 1, 60, 30, '', '', 1)",
        [],
    );
    assert!(bad.is_err(), "the check still refuses unknown actions");
}

#[test]
fn each_pool_keeps_its_own_copy_and_ownership_is_of_the_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, alice) = new_catalog(&dir);
    let bob = register(&catalog, "BOB");
    catalog
        .conn()
        .execute("UPDATE nodes SET pool_id = 1 WHERE id = ?1", [alice])
        .expect("alice's data goes to pool 1");
    assert_eq!(catalog.node_pool(alice).expect("q"), 1);
    assert_eq!(catalog.node_pool(bob).expect("q"), 0);
    let c = tandem_proto::ChunkId([9; 32]);
    catalog
        .insert_chunks(bob, &[(c, stored_at(0))], &[c])
        .expect("bob stores it in pool 0");
    // Pool 1 has no copy: Alice must upload it, and it is written there.
    assert_eq!(catalog.missing_chunks(1, &[c]).expect("q"), [c]);
    assert_eq!(catalog.unowned_chunks(alice, 1, &[c]).expect("q"), [c]);
    let in_pool_1 = crate::model::ChunkLocation {
        pool: 1,
        container: 2,
        ..stored_at(40)
    };
    let stored = catalog
        .insert_chunks(alice, &[(c, in_pool_1)], &[c])
        .expect("alice stores a second copy");
    assert_eq!(stored, 1);
    assert!(catalog.missing_chunks(1, &[c]).expect("q").is_empty());
    assert_eq!(catalog.unowned_chunks(alice, 1, &[c]).expect("q"), []);
    assert_eq!(catalog.unowned_chunks(alice, 0, &[c]).expect("q"), []);
    // A read takes one copy; either owner may read it.
    assert_eq!(
        catalog.chunk_locations(&[c]).expect("q")[0].map(|l| l.pool),
        Some(0)
    );
    for node in [alice, bob] {
        assert!(catalog.owned_chunk_locations(node, &[c]).expect("q")[0].is_some());
    }
    assert_eq!(catalog.chunk_users(&[c]).expect("q")[&c], [bob, alice]);
    assert_eq!(catalog.all_chunk_ids().expect("q"), [c]);
    assert_eq!(catalog.chunk_totals().expect("q"), (2, 20));
    // The sweep takes every copy.
    catalog.delete_chunks(&[c]).expect("sweep");
    assert_eq!(catalog.missing_chunks(0, &[c]).expect("q"), [c]);
    assert_eq!(catalog.missing_chunks(1, &[c]).expect("q"), [c]);
}

#[test]
fn a_moved_copy_keeps_its_owners_and_the_last_copy_is_never_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, alice) = new_catalog(&dir);
    let bob = register(&catalog, "BOB");
    let (c, d) = (
        tandem_proto::ChunkId([3; 32]),
        tandem_proto::ChunkId([4; 32]),
    );
    catalog
        .insert_chunks(bob, &[(c, stored_at(0)), (d, stored_at(20))], &[c, d])
        .expect("bob stores both in pool 0");
    let in_pool_1 = crate::model::ChunkLocation {
        pool: 1,
        container: 2,
        ..stored_at(40)
    };
    assert_eq!(catalog.put_pool_copies(&[(c, in_pool_1)]).expect("add"), 1);
    let rewritten = crate::model::ChunkLocation {
        container: 3,
        ..in_pool_1
    };
    catalog
        .put_pool_copies(&[(c, rewritten)])
        .expect("a damaged copy is replaced");
    assert_eq!(
        catalog.chunk_copies(&c).expect("q"),
        [stored_at(0), rewritten],
        "one copy per pool"
    );
    let unknown = tandem_proto::ChunkId([5; 32]);
    assert_eq!(
        catalog
            .put_pool_copies(&[(unknown, in_pool_1)])
            .expect("add"),
        0,
        "no copy of a chunk the index does not have"
    );
    // Pool 0's copy of c goes; d has no other copy and stays.
    assert_eq!(catalog.drop_pool_copies(0, &[c, d]).expect("drop"), 1);
    assert_eq!(catalog.chunk_copies(&c).expect("q").len(), 1);
    assert_eq!(catalog.chunk_copies(&d).expect("q").len(), 1);
    // Bob, recorded as owner on the dropped row, still owns c; Alice never did.
    assert!(catalog.owned_chunk_locations(bob, &[c]).expect("q")[0].is_some());
    assert!(catalog.owned_chunk_locations(alice, &[c]).expect("q")[0].is_none());
    assert_eq!(catalog.unowned_chunks(bob, 1, &[c]).expect("q"), []);
}

#[test]
fn a_chunk_index_from_before_pools_is_keyed_by_pool_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("catalog.db");
    {
        let old = Connection::open(&file).expect("create");
        old.execute_batch(
            "CREATE TABLE chunks (id BLOB PRIMARY KEY, container INTEGER NOT NULL,
               offset INTEGER NOT NULL, stored_len INTEGER NOT NULL, raw_len INTEGER NOT NULL,
               owner INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;",
        )
        .expect("old table");
        for (byte, owner) in [(1u8, 3i64), (2, 0)] {
            old.execute(
                "INSERT INTO chunks VALUES (?1, 4, ?2, 10, 20, ?3)",
                params![vec![byte; 32], i64::from(byte) * 100, owner],
            )
            .expect("old row");
        }
    }
    for _ in 0..2 {
        let catalog = Catalog::open(&file, Policy::default()).expect("open");
        let rows: Vec<(Vec<u8>, u32, u32, i64, i64)> = catalog
            .conn()
            .prepare("SELECT id, pool, container, offset, owner FROM chunks ORDER BY id")
            .expect("prepare")
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            [(vec![1; 32], 0, 4, 100, 3), (vec![2; 32], 0, 4, 200, 0)]
        );
        let location = catalog
            .chunk_locations(&[tandem_proto::ChunkId([2; 32])])
            .expect("q")[0]
            .expect("found");
        assert_eq!((location.pool, location.offset), (0, 200));
    }
}

#[test]
fn restore_db_reconciles_each_pool_s_copy_and_keeps_a_chunk_found_in_another_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, node) = new_catalog(&dir);
    let at = |pool: u32, container: u32, offset: u64| crate::model::ChunkLocation {
        pool,
        container,
        ..stored_at(offset)
    };
    let (both, moved, gone) = (
        tandem_proto::ChunkId([1; 32]),
        tandem_proto::ChunkId([2; 32]),
        tandem_proto::ChunkId([3; 32]),
    );
    let other = register(&catalog, "OTHER");
    // `both` has a copy in pools 0 (OTHER's) and 1; `moved` only in pool 0;
    // `gone` in 0.
    for (owner, id, loc) in [
        (other, both, at(0, 1, 0)),
        (node, both, at(1, 2, 0)),
        (node, moved, at(0, 1, 100)),
        (node, gone, at(0, 1, 200)),
    ] {
        catalog
            .insert_chunks(owner, &[(id, loc)], &[id])
            .expect("insert");
    }
    // The containers: `both` only in pool 1 now; `moved` only in pool 1
    // (freed from pool 0, stored again for a node of pool 1); `gone` nowhere.
    let found =
        std::collections::HashMap::from([(both, vec![at(1, 2, 0)]), (moved, vec![at(1, 3, 0)])]);
    let report = catalog.reconcile_chunks(&found).expect("reconcile");
    assert_eq!(report.kept, 1);
    assert_eq!(
        report.repointed, 1,
        "moved's row follows its data to pool 1"
    );
    assert_eq!(report.missing, [gone]);
    let copies = |id| catalog.chunk_copies(&id).expect("q");
    assert_eq!(copies(both), [at(1, 2, 0)]);
    assert_eq!(copies(moved), [at(1, 3, 0)]);
    assert!(copies(gone).is_empty());
    assert_eq!(catalog.unowned_chunks(node, 1, &[moved]).expect("q"), []);
    // OTHER's copy went, but the chunk is still OTHER's.
    assert_eq!(catalog.unowned_chunks(other, 1, &[both]).expect("q"), []);
    assert!(catalog.owned_chunk_locations(other, &[both]).expect("q")[0].is_some());
}

#[test]
fn checkpoints_after_backups_wait_one_at_a_time_and_are_spaced_out() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, _) = new_catalog(&dir);
    assert_eq!(
        catalog.schedule_checkpoint_after_backup(),
        Some(std::time::Duration::ZERO)
    );
    assert_eq!(
        catalog.schedule_checkpoint_after_backup(),
        None,
        "the waiting one serves this request too"
    );
    catalog.checkpoint_after_backup().unwrap();
    let wait = catalog
        .schedule_checkpoint_after_backup()
        .expect("a new one");
    assert!(
        wait > std::time::Duration::from_secs(5),
        "spaced from the last one: {wait:?}"
    );
}

#[test]
fn a_commit_names_every_version_it_made_inactive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, node) = new_catalog(&dir);
    let first = catalog
        .commit_objects(node, "/", &[version("/a"), version("/b")], &[], 100)
        .expect("first");
    assert!(first.deactivated_ids.is_empty());
    // A new version of /a replaces the first; /b is gone.
    let second = catalog
        .commit_objects(node, "/", &[version("/a")], &["/b".to_string()], 200)
        .expect("second");
    assert_eq!(second.stored, 1);
    assert_eq!(second.deactivated, 1, "only /b counts as deactivated");
    let all = VersionQuery {
        filespace: "/".into(),
        path_prefix: "/".into(),
        include_inactive: true,
        ..VersionQuery::default()
    };
    let page = catalog
        .query_versions(node, &all, None, 100)
        .expect("query");
    let mut inactive: Vec<_> = page
        .versions
        .iter()
        .filter(|v| !v.active)
        .map(|v| v.object_id)
        .collect();
    inactive.sort_unstable_by_key(|id| id.0);
    let mut named = second.deactivated_ids.clone();
    named.sort_unstable_by_key(|id| id.0);
    assert_eq!(inactive.len(), 2, "the replaced /a and the gone /b");
    assert_eq!(named, inactive);
}

#[test]
fn a_catalog_holding_a_trigger_or_view_is_refused_before_anything_runs() {
    for planted in [
        "CREATE TRIGGER endless AFTER INSERT ON nodes BEGIN SELECT 1; END;",
        "CREATE VIEW peek AS SELECT * FROM nodes;",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("catalog.db");
        drop(Catalog::open(&file, Policy::default()).expect("open"));
        Connection::open(&file)
            .unwrap()
            .execute_batch(planted)
            .unwrap();
        let Err(err) = Catalog::open(&file, Policy::default()) else {
            panic!("a catalog with {planted:?} was opened");
        };
        let text = err.to_string();
        assert!(text.contains("Tandem never creates"), "{text}");
        assert!(text.contains("endless") || text.contains("peek"), "{text}");
    }
}

#[test]
fn a_memory_map_is_set_on_every_connection_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, node) = new_catalog(&dir);
    let mapped = |catalog: &Catalog| -> Vec<i64> {
        let mut sizes = vec![
            catalog
                .conn()
                .query_row("PRAGMA mmap_size", [], |r| r.get(0))
                .unwrap(),
        ];
        for reader in &catalog.readers {
            let reader = reader.lock().unwrap();
            sizes.push(
                reader
                    .query_row("PRAGMA mmap_size", [], |r| r.get(0))
                    .unwrap(),
            );
        }
        sizes
    };
    // A vault's catalog (on a share someone else may cut short) is read
    // with pread, as SQLite does by default.
    assert!(mapped(&catalog).iter().all(|&size| size == 0));
    catalog.read_through_memory_map(64 << 20).unwrap();
    assert_eq!(mapped(&catalog), vec![64 << 20; 1 + super::READERS]);
    // Reads through the map see what the writer commits after it.
    let paths = ["/m", "/n"];
    let versions: Vec<NewVersion> = paths.iter().map(|p| version(p)).collect();
    catalog
        .commit_objects(node, "/", &versions, &[], 100)
        .expect("commit");
    let everything = VersionQuery {
        filespace: "/".into(),
        path_prefix: "/".into(),
        ..VersionQuery::default()
    };
    let listed = all_pages(&catalog, node, &everything, 10);
    assert_eq!(listed.len(), 2, "{listed:?}");
}

#[test]
fn a_checkpoint_after_a_backup_does_not_wait_for_a_scans_old_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, node) = new_catalog(&dir);
    catalog
        .commit_objects(node, "/", &[version("/a")], &[], 100)
        .expect("commit");
    // An expiration's sweep holds a snapshot from before the next commit.
    let snapshot = catalog.sweep_snapshot().expect("snapshot");
    catalog
        .commit_objects(node, "/", &[version("/b")], &[], 200)
        .expect("commit");
    let started = std::time::Instant::now();
    catalog.checkpoint_after_backup().expect("checkpoint");
    // Not a speed check: a checkpoint that waited would take the 30 s busy
    // timeout, holding the writer all that time.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(snapshot.unreferenced_chunks().expect("scan").is_empty());
    // The writer still has its own busy timeout afterwards.
    let timeout: i64 = catalog
        .conn()
        .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
        .unwrap();
    assert_eq!(timeout, 30_000);
}

#[test]
fn every_change_to_a_nodes_versions_draws_a_new_change_token_and_nothing_else_does() {
    use crate::model::StoredVersion;
    use tandem_proto::ObjectId;
    let dir = tempfile::tempdir().expect("tempdir");
    let (catalog, node) = new_catalog(&dir);
    let other = register(&catalog, "N2");
    let token = |n| catalog.change_token(n).expect("token");
    let mut last = token(node);
    assert_eq!(last, 0, "none drawn yet");
    let mut changed = |what: &str, expected: bool| {
        let now = token(node);
        assert_eq!(now != last, expected, "{what}: {last} -> {now}");
        last = now;
    };
    catalog
        .commit_objects(node, "/", &[version("/a"), version("/b")], &[], 100)
        .expect("commit");
    changed("new versions", true);
    catalog
        .commit_objects(node, "/", &[], &["/nosuch".to_string()], 150)
        .expect("commit");
    changed("a backup that changed nothing", false);
    catalog
        .commit_objects(node, "/", &[], &["/a".to_string()], 200)
        .expect("commit");
    changed("a deactivation", true);
    let stored = |id: u8, path: &str| StoredVersion {
        object_id: ObjectId([id; 16]),
        filespace: "/".into(),
        attrs: attrs(path, crate::model::ObjectKind::File),
        backup_ns: 300,
        active: true,
        deactivated_ns: 0,
        chunks: Vec::new(),
    };
    catalog
        .put_replicated(node, &[stored(7, "/r")])
        .expect("put");
    changed("a replicated version", true);
    catalog
        .put_replicated(node, &[stored(7, "/r")])
        .expect("put");
    changed("one the replica had", false);
    catalog
        .deactivate_versions(node, &[(ObjectId([7; 16]), 400)])
        .expect("deactivate");
    changed("a vault's deactivation", true);
    catalog
        .apply_states(
            node,
            &[tandem_replication::ObjectState {
                object_id: ObjectId([7; 16]),
                active: false,
                deactivated_ns: 450,
            }],
        )
        .expect("states");
    changed("a replica's state", true);
    catalog
        .delete_replicated(node, &[ObjectId([7; 16])])
        .expect("delete");
    changed("a replica's deletion", true);
    // Expiration: /a, inactive since 200, is past any retention a day of
    // nanoseconds times 10,000 later.
    let expired = catalog
        .expired_versions(200 + super::DAY_NS * 10_000)
        .expect("expired");
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(catalog.delete_versions(&expired).expect("delete"), 1);
    changed("an expiration", true);
    let active_b = catalog
        .query_versions(
            node,
            &VersionQuery {
                path_prefix: "/b".into(),
                ..VersionQuery::default()
            },
            None,
            10,
        )
        .expect("query")
        .versions;
    assert_eq!(
        catalog
            .delete_node_versions(node, &[active_b[0].object_id])
            .expect("delete backup"),
        1
    );
    changed("delete backup", true);
    catalog
        .commit_objects(node, "/", &[version("/c")], &[], 500)
        .expect("commit");
    changed("new versions", true);
    catalog
        .delete_filespace(node, "/")
        .expect("delete filespace");
    changed("a filespace's removal", true);
    assert_eq!(token(other), 0, "another node's token stays");
}
