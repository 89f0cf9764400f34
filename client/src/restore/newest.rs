//! The newest listed version of each path, for a restore.
//!
//! The server lists a node's versions sorted by directory, name, then
//! backup time, so the newest version of a path is the last of its run.
//! Keeping a list whose last entry is replaced needs no map and no second
//! copy of each path: the map and its keys were a fifth of the client's
//! peak memory in a restore of 80,000 small files. The versions kept come
//! in the server's order, where every directory comes before what is in it.
//! A listing out of that order (a server that breaks it) is sorted by path
//! afterwards and keeps the same versions, the last listed of each path.

use tandem_proto::names::split_path;
use tandem_proto::pb;

/// Gathers the newest version of each path from a listing.
#[derive(Debug)]
pub(super) struct NewestPerPath {
    versions: Vec<pb::ObjectVersion>,
    /// Every path so far sorted after the one before it, by directory then
    /// name (the server's order).
    in_order: bool,
}

impl Default for NewestPerPath {
    fn default() -> Self {
        NewestPerPath {
            versions: Vec::new(),
            in_order: true,
        }
    }
}

impl NewestPerPath {
    /// Takes the next listed version; a later one of the same path replaces
    /// it.
    pub(super) fn offer(&mut self, mut version: pb::ObjectVersion) {
        let path = path_of(&version);
        let same_path = match self.versions.last().map(path_of) {
            Some(last) if last == path => true,
            Some(last) => {
                self.in_order &= split_path(last) < split_path(path);
                false
            }
            None => false,
        };
        // Not needed to restore; freed now rather than after the listing.
        version.object_id = Vec::new();
        version.filespace = String::new();
        match self.versions.last_mut() {
            Some(last) if same_path => *last = version,
            _ => self.versions.push(version),
        }
    }

    /// The newest version of each path offered.
    pub(super) fn into_versions(mut self) -> Vec<pb::ObjectVersion> {
        if !self.in_order {
            // The sort is stable, so each path's versions keep their order
            // of arrival; reversed, the last to arrive is the one kept.
            self.versions.sort_by(|a, b| path_of(a).cmp(path_of(b)));
            self.versions.reverse();
            self.versions
                .dedup_by(|later, kept| path_of(later) == path_of(kept));
            self.versions.reverse();
        }
        self.versions
    }
}

/// A listed version's path (empty when it came without attributes).
fn path_of(v: &pb::ObjectVersion) -> &str {
    v.attrs.as_ref().map_or("", |a| a.path.as_str())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn version(path: &str, time: i64) -> pb::ObjectVersion {
        pb::ObjectVersion {
            object_id: vec![7; 16],
            filespace: "/".into(),
            attrs: Some(pb::ObjectAttrs {
                path: path.into(),
                ..Default::default()
            }),
            backup_time_ns: time,
            ..Default::default()
        }
    }

    fn newest(listing: &[(&str, i64)]) -> Vec<(String, i64)> {
        let mut newest = NewestPerPath::default();
        for (path, time) in listing {
            newest.offer(version(path, *time));
        }
        newest
            .into_versions()
            .iter()
            .map(|v| (path_of(v).to_string(), v.backup_time_ns))
            .collect()
    }

    /// What a map from path to the last version listed keeps.
    fn by_map(listing: &[(&str, i64)]) -> Vec<(String, i64)> {
        let mut map = BTreeMap::new();
        for (path, time) in listing {
            map.insert(path.to_string(), *time);
        }
        map.into_iter().collect()
    }

    #[test]
    fn the_last_listed_version_of_each_path_is_kept_in_the_servers_order() {
        // Directory order: "/x-y/" sorts before "/x/", and "/x/a0" (in
        // "/x/") before "/x/a/b" (in "/x/a/"), unlike the paths themselves.
        let listing = [
            ("/x-y/f", 1),
            ("/x/a0", 1),
            ("/x/a0", 2),
            ("/x/a0", 3),
            ("/x/a/b", 1),
            ("/x/a/b", 2),
        ];
        let mut newest_of_each = NewestPerPath::default();
        for (path, time) in listing {
            newest_of_each.offer(version(path, time));
        }
        assert!(newest_of_each.in_order);
        let versions = newest_of_each.into_versions();
        let kept: Vec<_> = versions
            .iter()
            .map(|v| (path_of(v), v.backup_time_ns))
            .collect();
        assert_eq!(kept, [("/x-y/f", 1), ("/x/a0", 3), ("/x/a/b", 2)]);
        assert!(versions.iter().all(|v| v.object_id.is_empty()));
    }

    #[test]
    fn a_listing_out_of_order_keeps_what_a_map_would() {
        let listing = [
            ("/b/2", 1),
            ("/a/1", 1),
            ("/b/2", 5),
            ("/a/1", 2),
            ("/c", 9),
            ("/a/1", 3),
            ("/b/2", 4),
        ];
        assert_eq!(newest(&listing), by_map(&listing));
        assert_eq!(
            newest(&listing),
            [("/a/1".into(), 3), ("/b/2".into(), 4), ("/c".into(), 9)]
        );
        assert!(newest(&[]).is_empty());
    }
}
