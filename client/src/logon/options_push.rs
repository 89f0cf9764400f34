//! Writes the replication server the primary pushed at logon into the options
//! file (TSM rewrites the REPLSERVERNAME stanza in dsm.sys / dsm.opt).
//!
//! Only the pushed keys change: `my_replication_server` and
//! `[replication_servers.NAME]` (`address`, `server_guid`, `fingerprint`). Everything else,
//! comments included, stays as the user wrote it (toml_edit). The file is
//! rewritten only when its text would change, and atomically (temp + fsync +
//! rename), so a crash never leaves a half-written options file.

use std::path::Path;

use tandem_proto::ServerGuid;
use toml_edit::{DocumentMut, Item, Table, value};

/// What the primary said about its replication server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedServer {
    /// Server name.
    pub name: String,
    /// Client-facing address.
    pub address: String,
    /// Replication GUID.
    pub guid: ServerGuid,
    /// Its certificate fingerprint, checked before failing over to it.
    pub fingerprint: String,
}

/// The comment that marks the pushed block.
pub const MARKER: &str =
    "# Maintained by Tandem: pushed by the primary server at logon. Edits are overwritten.";

/// Failure to update the options file.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The file could not be read or parsed.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// File.
        path: String,
        /// Why.
        cause: String,
    },
    /// The file could not be written.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// File.
        path: String,
        /// Why.
        cause: String,
    },
}

/// Returns the document text with `server` as the pushed block.
///
/// # Errors
/// A parse error of `text`.
pub fn render(text: &str, server: &PushedServer) -> Result<String, toml_edit::TomlError> {
    let mut doc: DocumentMut = text.parse()?;
    doc["my_replication_server"] = value(server.name.as_str());
    if let Some(mut key) = doc.key_mut("my_replication_server") {
        let prefix = format!("\n{MARKER}\n");
        if key.leaf_decor().prefix().and_then(|p| p.as_str()) != Some(prefix.as_str()) {
            key.leaf_decor_mut().set_prefix(prefix);
        }
    }
    let servers = doc.entry("replication_servers").or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    if let Some(servers) = servers.as_table_mut() {
        servers.set_implicit(true);
        let mut entry = Table::new();
        entry.decor_mut().set_prefix(format!("\n{MARKER}\n"));
        entry["address"] = value(server.address.as_str());
        entry["server_guid"] = value(server.guid.to_string());
        entry["fingerprint"] = value(server.fingerprint.as_str());
        // Keep the existing table (and its position) when only values change.
        match servers.get_mut(&server.name).and_then(Item::as_table_mut) {
            Some(existing) => {
                existing["address"] = value(server.address.as_str());
                existing["server_guid"] = value(server.guid.to_string());
                existing["fingerprint"] = value(server.fingerprint.as_str());
            }
            None => {
                servers.insert(&server.name, Item::Table(entry));
            }
        }
    }
    Ok(doc.to_string())
}

/// The new primary as the options file is to name it after a planned role
/// switch on the servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPrimary<'a> {
    /// `server_name`.
    pub name: &'a str,
    /// `server_address`.
    pub address: &'a str,
    /// `server_fingerprint`; `None` keeps the file's trust as it is (a
    /// `ca_file` vouches for the new server).
    pub fingerprint: Option<&'a str>,
}

/// Returns the document text with `primary` as the server, keeping every
/// comment and every other key. The pushed block goes: it named the
/// replication server of the old primary, and the new primary pushes its
/// own at the next logon. The new primary's own stanza goes with it.
///
/// # Errors
/// A parse error of `text`.
pub fn render_moved(text: &str, primary: &NewPrimary<'_>) -> Result<String, toml_edit::TomlError> {
    let mut doc: DocumentMut = text.parse()?;
    set_keeping_decor(&mut doc, "server_name", primary.name);
    set_keeping_decor(&mut doc, "server_address", primary.address);
    if let Some(fp) = primary.fingerprint {
        set_keeping_decor(&mut doc, "server_fingerprint", fp);
    }
    doc.remove("my_replication_server");
    if let Some(servers) = doc
        .get_mut("replication_servers")
        .and_then(Item::as_table_like_mut)
    {
        let stale: Vec<String> = servers
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| k.eq_ignore_ascii_case(primary.name))
            .collect();
        for key in stale {
            servers.remove(&key);
        }
    }
    Ok(doc.to_string())
}

/// Sets top-level `key` to `text`, keeping the comments around its old value.
fn set_keeping_decor(doc: &mut DocumentMut, key: &str, text: &str) {
    match doc.get_mut(key) {
        Some(item) if item.is_value() => {
            let decor = item.as_value().map(|v| v.decor().clone());
            *item = value(text);
            if let (Some(decor), Some(v)) = (decor, item.as_value_mut()) {
                *v.decor_mut() = decor;
            }
        }
        _ => {
            // A new top-level key goes before the first table.
            doc.insert(key, value(text));
        }
    }
}

/// Rewrites the options file at `path` for a new primary (see
/// [`render_moved`]); returns whether the text changed.
///
/// # Errors
/// As [`update`].
pub fn move_primary(path: &Path, primary: &NewPrimary<'_>) -> Result<bool, PushError> {
    rewrite(path, |text| render_moved(text, primary))
}

/// Updates the options file at `path` if the pushed block differs. Returns
/// whether the file was rewritten.
///
/// # Errors
/// [`PushError`] naming the file; the file is unchanged then.
pub fn update(path: &Path, server: &PushedServer) -> Result<bool, PushError> {
    rewrite(path, |text| render(text, server))
}

/// Writes `password` as the options file's inline `password` after a
/// password change, keeping everything else as the user wrote it. Returns
/// false when the file holds no top-level `password` (nothing to update).
///
/// # Errors
/// As [`update`].
pub fn set_inline_password(path: &Path, password: &str) -> Result<bool, PushError> {
    let mut had_one = false;
    let changed = rewrite(path, |text| {
        let mut doc: DocumentMut = text.parse()?;
        if let Some(item) = doc.get_mut("password")
            && item.is_value()
        {
            had_one = true;
            let decor = item.as_value().map(|v| v.decor().clone());
            *item = value(password);
            if let (Some(decor), Some(v)) = (decor, item.as_value_mut()) {
                *v.decor_mut() = decor;
            }
        }
        Ok(doc.to_string())
    })?;
    Ok(had_one || changed)
}

/// Rewrites the options file with `edit`'s result, atomically and only when
/// the text changes; a read-only file is refused.
fn rewrite(
    path: &Path,
    edit: impl FnOnce(&str) -> Result<String, toml_edit::TomlError>,
) -> Result<bool, PushError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PushError::Read {
        path: shown.clone(),
        cause: e.to_string(),
    })?;
    let new = edit(&text).map_err(|e| PushError::Read {
        path: shown.clone(),
        // The file may hold the password: its lines are not quoted.
        cause: tandem_os::secret_text::without_quoted_lines(&e.to_string()),
    })?;
    if new == text {
        return Ok(false);
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(path)
            .map_err(|e| PushError::Read {
                path: shown.clone(),
                cause: e.to_string(),
            })?
            .permissions(),
    );
    // A file marked read-only, or one this user cannot write, is not
    // rewritten behind their back through the directory (a rename would
    // succeed even so, and root passes every permission check).
    if mode & 0o222 == 0 || std::fs::OpenOptions::new().append(true).open(path).is_err() {
        return Err(PushError::Write {
            path: shown,
            cause: "the file is read-only".into(),
        });
    }
    // The file a link leads to is rewritten, with its owner and group.
    tandem_os::atomic_file::rewrite_keeping_owner(path, new.as_bytes()).map_err(|e| {
        PushError::Write {
            path: shown,
            cause: e.to_string(),
        }
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(address: &str) -> PushedServer {
        PushedServer {
            name: "SECONDARY".into(),
            address: address.into(),
            guid: "91.0f.ef.90.5c.cc.11.e1.ae.34.08.00.00.00.00.02"
                .parse()
                .unwrap(),
            fingerprint: "AB".repeat(32),
        }
    }

    const USER: &str = "# my node\nnode_name = \"alice\" # trailing comment\nserver_address = \"http://127.0.0.1:1500\"\npassword = \"secret123\"\n\n[other]\nkeep = true\n";

    #[test]
    fn a_moved_primary_replaces_the_server_and_drops_the_pushed_block() {
        let pushed = render(USER, &server("https://10.0.0.2:1500")).unwrap();
        let with_pin = pushed.replace(
            "server_address = \"http://127.0.0.1:1500\"",
            "server_address = \"https://10.0.0.1:1500\" # the old one\nserver_fingerprint = \"AA\"",
        );
        let primary = NewPrimary {
            name: "SECONDARY",
            address: "https://10.0.0.2:1500",
            fingerprint: Some("CD:EF"),
        };
        let moved = render_moved(&with_pin, &primary).unwrap();
        let doc: DocumentMut = moved.parse().unwrap();
        assert_eq!(doc["server_name"].as_str(), Some("SECONDARY"));
        assert_eq!(
            doc["server_address"].as_str(),
            Some("https://10.0.0.2:1500")
        );
        assert_eq!(doc["server_fingerprint"].as_str(), Some("CD:EF"));
        assert!(doc.get("my_replication_server").is_none(), "{moved}");
        assert!(
            doc.get("replication_servers")
                .and_then(|t| t.get("SECONDARY"))
                .is_none(),
            "{moved}"
        );
        // The user's comments, keys and tables stay.
        for kept in [
            "# my node",
            "# trailing comment",
            "# the old one",
            "[other]",
            "keep = true",
        ] {
            assert!(moved.contains(kept), "{kept} lost:\n{moved}");
        }
        assert!(moved.starts_with("# my node\n"), "{moved}");
        // Under a CA file no fingerprint is written; the CA vouches.
        let ca = NewPrimary {
            fingerprint: None,
            ..primary
        };
        let moved = render_moved(USER, &ca).unwrap();
        assert!(!moved.contains("server_fingerprint"), "{moved}");
        // Moving again to the same place changes nothing.
        let twice = render_moved(&render_moved(&with_pin, &primary).unwrap(), &primary).unwrap();
        assert_eq!(twice, render_moved(&with_pin, &primary).unwrap());
    }

    #[test]
    fn a_new_inline_password_keeps_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tandem.toml");
        std::fs::write(&file, "password = \"old\" # mine\nnode_name = \"a\"\n").unwrap();
        assert!(set_inline_password(&file, "new \"quoted\" pw").unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("# mine"), "{text}");
        let doc: DocumentMut = text.parse().unwrap();
        assert_eq!(doc["password"].as_str(), Some("new \"quoted\" pw"));
        assert_eq!(doc["node_name"].as_str(), Some("a"));
        std::fs::write(&file, "password_file = \"pw\"\n").unwrap();
        assert!(!set_inline_password(&file, "x").unwrap());
    }

    #[test]
    fn adds_the_block_and_keeps_comments_and_keys() {
        let out = render(USER, &server("http://127.0.0.1:1501")).unwrap();
        assert!(out.contains("# my node"));
        assert!(out.contains("# trailing comment"));
        assert!(out.contains("[other]\nkeep = true"));
        assert!(out.contains(MARKER));
        let parsed: toml_edit::DocumentMut = out.parse().unwrap();
        assert_eq!(parsed["my_replication_server"].as_str(), Some("SECONDARY"));
        assert_eq!(
            parsed["replication_servers"]["SECONDARY"]["address"].as_str(),
            Some("http://127.0.0.1:1501")
        );
        assert_eq!(parsed["node_name"].as_str(), Some("alice"));
    }

    #[test]
    fn rendering_twice_changes_nothing() {
        let once = render(USER, &server("http://127.0.0.1:1501")).unwrap();
        let twice = render(&once, &server("http://127.0.0.1:1501")).unwrap();
        assert_eq!(once, twice);
        let moved = render(&once, &server("http://127.0.0.1:1502")).unwrap();
        assert!(moved.contains("1502") && !moved.contains("1501"));
        assert_eq!(moved.matches(MARKER).count(), 2);
    }

    #[test]
    fn update_writes_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tandem.toml");
        std::fs::write(&p, USER).unwrap();
        assert!(update(&p, &server("http://127.0.0.1:1501")).unwrap());
        assert!(!update(&p, &server("http://127.0.0.1:1501")).unwrap());
    }
}
