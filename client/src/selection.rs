//! Which stored objects a restore or query means, and where each goes.
//!
//! TSM semantics: SOURCE is a path, or a directory followed by a pattern in the
//! last component (`/data/*`, `/data/*.txt`). Without `--subdir` a pattern
//! matches objects directly in that directory; with `--subdir` it matches names
//! at any depth below it. A plain path names one object; with `--subdir` and a
//! directory, everything below it too. Each object's place under DEST is its
//! path relative to SOURCE's directory part.

use globset::{GlobBuilder, GlobMatcher};

use crate::error::ClientError;

/// A parsed SOURCE.
#[derive(Debug, Clone)]
pub struct Selection {
    /// SOURCE's directory part: stored paths are restored relative to it.
    pub base: String,
    /// The path prefix to ask the server for.
    pub prefix: String,
    what: What,
    subdir: bool,
}

#[derive(Debug, Clone)]
enum What {
    Exact(String),
    Pattern(GlobMatcher),
}

/// Whether `s` has a `*`, `?` or `[` that is not escaped by a backslash.
fn has_wildcard(s: &str) -> bool {
    let mut escaped = false;
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// A literal name from its escaped form: `\x` stands for `x`, so names that
/// contain wildcard characters (or backslashes) can be given exactly.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if !escaped && c == '\\' {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(c);
    }
    if escaped {
        out.push('\\');
    }
    out
}

/// The SOURCE form of a literal stored path: its wildcard characters and
/// backslashes escaped, so [`Selection::parse`] names exactly that path.
pub fn escape_literal(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Selection {
    /// Parses SOURCE, encoded as stored names are ([`crate::names`]).
    /// Relative paths are taken from the working directory; `\*`, `\?`,
    /// `\[` and `\\` stand for those characters in a name.
    ///
    /// # Errors
    /// [`ClientError::Usage`] for an empty SOURCE, wildcards outside the last
    /// component, or a malformed pattern.
    pub fn parse(source: &str, subdir: bool) -> Result<Self, ClientError> {
        if source.trim().is_empty() {
            return Err(ClientError::Usage("the source path is empty".into()));
        }
        let mut text = if source.starts_with('/') {
            source.to_string()
        } else {
            let cwd = std::env::current_dir()
                .map_err(|e| ClientError::Usage(format!("cannot resolve {source:?}: {e}")))?;
            format!("{}/{source}", crate::names::encode(cwd.as_os_str()))
        };
        if text.ends_with('/') && text != "/" {
            text.push('*');
        }
        let split = text.rfind('/').unwrap_or(0);
        let (dir, last) = (&text[..split], &text[split + 1..]);
        if has_wildcard(dir) {
            return Err(ClientError::Usage(format!(
                "{source:?}: wildcards are allowed only in the last component (e.g. /data/*.txt); \
                 write \\*, \\? or \\[ for a directory whose name contains them"
            )));
        }
        let dir = unescape(dir);
        let dir_abs = crate::paths::absolute(std::path::Path::new(&crate::names::decode(
            if dir.is_empty() { "/" } else { &dir },
        )))
        .map_err(|e| ClientError::Usage(format!("cannot resolve {source:?}: {e}")))?;
        let base = crate::names::encode(dir_abs.as_os_str());
        if has_wildcard(last) {
            let glob = GlobBuilder::new(last)
                .literal_separator(true)
                .build()
                .map_err(|e| ClientError::Usage(format!("pattern {last:?} is invalid: {e}")))?;
            Ok(Selection {
                prefix: base.clone(),
                base,
                what: What::Pattern(glob.compile_matcher()),
                subdir,
            })
        } else {
            let last = unescape(last);
            let exact = if last.is_empty() {
                base.clone()
            } else if base == "/" {
                format!("/{last}")
            } else {
                format!("{base}/{last}")
            };
            let exact = crate::paths::absolute(std::path::Path::new(&crate::names::decode(&exact)))
                .map_err(|e| ClientError::Usage(format!("cannot resolve {source:?}: {e}")))?;
            let exact = crate::names::encode(exact.as_os_str());
            let base = match exact.rfind('/') {
                Some(0) | None => "/".to_string(),
                Some(i) => exact[..i].to_string(),
            };
            Ok(Selection {
                prefix: exact.clone(),
                base,
                what: What::Exact(exact),
                subdir,
            })
        }
    }

    /// Whether a stored path is selected.
    pub fn matches(&self, path: &str) -> bool {
        match &self.what {
            What::Exact(p) => path == p || (self.subdir && crate::paths::within(path, p)),
            What::Pattern(glob) => {
                let Some(rel) = self.relative(path) else {
                    return false;
                };
                if rel.is_empty() {
                    return false;
                }
                if !self.subdir {
                    return !rel.contains('/') && glob.is_match(rel);
                }
                // With --subdir, a matching directory brings everything below
                // it, and matching names count at any depth.
                rel.split('/').any(|part| glob.is_match(part))
            }
        }
    }

    /// The part of `path` below [`Selection::base`] (`a/b` for `/base/a/b`),
    /// or `None` if it is not below it.
    pub fn relative<'p>(&self, path: &'p str) -> Option<&'p str> {
        if self.base == "/" {
            return path.strip_prefix('/');
        }
        let rest = path.strip_prefix(self.base.as_str())?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix('/')
        }
    }
}

/// Backup dates a command is limited to (TSM FROMDATE/TODATE): versions
/// stored at or after `from_ns` and at or before `to_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupDates {
    /// The earliest backup time taken (Unix ns).
    pub from_ns: i64,
    /// The latest backup time taken (Unix ns).
    pub to_ns: i64,
}

impl BackupDates {
    /// The range `--fromdate`/`--todate` name, `None` when neither is given.
    /// A date runs from its first to its last instant, so `--todate
    /// 2026-12-01` takes that whole day.
    ///
    /// # Errors
    /// [`ClientError::Usage`] for a time that does not parse or a range
    /// that ends before it begins.
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Option<Self>, ClientError> {
        if from.is_none() && to.is_none() {
            return Ok(None);
        }
        let from_ns = from
            .map(crate::output::timefmt::parse_time)
            .transpose()?
            .map_or(i64::MIN, |t| t.first_ns);
        let to_ns = to
            .map(crate::output::timefmt::parse_time)
            .transpose()?
            .map_or(i64::MAX, |t| t.last_ns);
        if to_ns < from_ns {
            return Err(ClientError::Usage(format!(
                "--todate {} is before --fromdate {}; give a range that ends after it begins",
                to.unwrap_or_default(),
                from.unwrap_or_default()
            )));
        }
        Ok(Some(BackupDates { from_ns, to_ns }))
    }

    /// Whether a version stored at `backup_ns` is in the range.
    #[must_use]
    pub fn contains(&self, backup_ns: i64) -> bool {
        (self.from_ns..=self.to_ns).contains(&backup_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_without_subdir_matches_one_level() {
        let s = Selection::parse("/data/*", false).unwrap();
        assert_eq!(s.base, "/data");
        assert!(s.matches("/data/a"));
        assert!(!s.matches("/data/a/b"));
        assert!(!s.matches("/data"));
        assert!(!s.matches("/database/x"));
    }

    #[test]
    fn pattern_with_subdir_matches_names_at_any_depth() {
        let s = Selection::parse("/data/*.txt", true).unwrap();
        assert!(s.matches("/data/a.txt"));
        assert!(s.matches("/data/x/y/b.txt"));
        assert!(!s.matches("/data/x/y/b.bin"));
        assert_eq!(s.relative("/data/x/y/b.txt"), Some("x/y/b.txt"));
    }

    #[test]
    fn exact_path_and_directory_with_subdir() {
        let s = Selection::parse("/data/dir", false).unwrap();
        assert_eq!(s.base, "/data");
        assert!(s.matches("/data/dir"));
        assert!(!s.matches("/data/dir/f"));
        let s = Selection::parse("/data/dir", true).unwrap();
        assert!(s.matches("/data/dir/f"));
        assert!(!s.matches("/data/dirt"));
        assert_eq!(s.relative("/data/dir/f"), Some("dir/f"));
    }

    #[test]
    fn trailing_slash_means_everything_in_it() {
        let s = Selection::parse("/data/", true).unwrap();
        assert!(s.matches("/data/a/b"));
    }

    #[test]
    fn escaped_wildcards_name_objects_exactly() {
        let s = Selection::parse("/data/a\\*b", false).unwrap();
        assert!(s.matches("/data/a*b"));
        assert!(!s.matches("/data/axb"));
        let s = Selection::parse("/data/we\\[ird\\]/x\\?", true).unwrap();
        assert_eq!(s.base, "/data/we[ird]");
        assert!(s.matches("/data/we[ird]/x?"));
        assert!(s.matches("/data/we[ird]/x?/inside"));
        let s = Selection::parse("/data/\\[d\\]/*", false).unwrap();
        assert!(s.matches("/data/[d]/f"));
    }

    #[test]
    fn a_pattern_matching_a_directory_brings_its_contents_with_subdir() {
        let s = Selection::parse("/data/dir*", true).unwrap();
        assert!(s.matches("/data/dir1"));
        assert!(s.matches("/data/dir1/deep/file"));
        assert!(s.matches("/data/other/dir2"));
        assert!(!s.matches("/data/other/file"));
        let s = Selection::parse("/data/dir*", false).unwrap();
        assert!(!s.matches("/data/dir1/deep/file"));
    }

    #[test]
    fn bad_sources_are_refused() {
        assert!(Selection::parse("", false).is_err());
        assert!(Selection::parse("/da*/x", false).is_err());
        assert!(Selection::parse("/data/[", false).is_err());
    }

    #[test]
    fn backup_dates_take_whole_days_and_refuse_a_backward_range() {
        assert_eq!(BackupDates::parse(None, None).unwrap(), None);
        let day = BackupDates::parse(Some("2026-12-01"), Some("2026-12-01"))
            .unwrap()
            .unwrap();
        assert_eq!(day.to_ns - day.from_ns, 86_400_000_000_000 - 1);
        assert!(day.contains(day.from_ns) && day.contains(day.to_ns));
        assert!(!day.contains(day.to_ns + 1));
        let open = BackupDates::parse(None, Some("2026-12-01"))
            .unwrap()
            .unwrap();
        assert!(open.contains(0));
        let err = BackupDates::parse(Some("2026-12-02"), Some("2026-12-01")).unwrap_err();
        assert!(
            err.to_string().contains("before --fromdate 2026-12-02"),
            "{err}"
        );
        assert!(BackupDates::parse(Some("someday"), None).is_err());
    }
}
