//! The include-exclude list: which local paths a backup leaves out.
//!
//! Three kinds of rule, each a glob matched against the whole absolute path:
//! - `exclude_dir` (TSM EXCLUDE.DIR): a directory it matches is not entered;
//!   nothing below it is backed up, whatever `include` says.
//! - `exclude` (TSM EXCLUDE): a path it matches is left out (a directory
//!   with everything below it) unless an `include` rule matches it too.
//! - `include` (TSM INCLUDE): brings back what `exclude` would leave out.
//!
//! The result does not depend on the order the rules are written in: an
//! administrator can read one rule at a time. TSM reads its list bottom-up
//! and the first match decides; here the more specific kind wins instead
//! (`exclude_dir` over `include` over `exclude`). To keep files inside an
//! excluded directory, include the directory and the files
//! (`include = ["/data/keep", "/data/keep/**"]`).

use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

/// Which list a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// `exclude_dir`.
    ExcludeDir,
    /// `include`.
    Include,
    /// `exclude`.
    Exclude,
}

impl RuleKind {
    /// The option's name, as written in the options file.
    #[must_use]
    pub fn option(self) -> &'static str {
        match self {
            RuleKind::ExcludeDir => "exclude_dir",
            RuleKind::Include => "include",
            RuleKind::Exclude => "exclude",
        }
    }
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Its kind.
    pub kind: RuleKind,
    /// Its glob.
    pub pattern: String,
}

/// What the list says of one path, and which rule said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Backed up: no rule matched, or an `include` did (named).
    Included(Option<Rule>),
    /// Left out by this rule.
    Excluded(Rule),
}

impl Decision {
    /// Whether the path is backed up.
    #[must_use]
    pub fn is_included(&self) -> bool {
        matches!(self, Decision::Included(_))
    }
}

/// The compiled list.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    exclude_dir: GlobSet,
    include: GlobSet,
    exclude: GlobSet,
    /// Rule indexes per set, so a match can be named.
    exclude_dir_ids: Vec<usize>,
    include_ids: Vec<usize>,
    exclude_ids: Vec<usize>,
}

/// A glob that is not valid: which option, which pattern, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option} pattern {pattern:?} is invalid: {cause}")]
pub struct BadPattern {
    /// The option it was given in.
    pub option: &'static str,
    /// The pattern.
    pub pattern: String,
    /// What globset said.
    pub cause: String,
}

impl Rules {
    /// Compiles the three lists; the first bad pattern is an error naming it.
    ///
    /// # Errors
    /// [`BadPattern`].
    pub fn new(
        exclude_dir: &[String],
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, BadPattern> {
        let mut rules = Vec::new();
        let mut build = |kind: RuleKind, patterns: &[String]| {
            let mut set = GlobSetBuilder::new();
            let mut ids = Vec::new();
            for pattern in patterns {
                let glob = Glob::new(pattern).map_err(|e| BadPattern {
                    option: kind.option(),
                    pattern: pattern.clone(),
                    cause: e.kind().to_string(),
                })?;
                set.add(glob);
                ids.push(rules.len());
                rules.push(Rule {
                    kind,
                    pattern: pattern.clone(),
                });
            }
            let set = set.build().map_err(|e| BadPattern {
                option: kind.option(),
                pattern: patterns.join(", "),
                cause: e.to_string(),
            })?;
            Ok::<_, BadPattern>((set, ids))
        };
        let (exclude_dir, exclude_dir_ids) = build(RuleKind::ExcludeDir, exclude_dir)?;
        let (include, include_ids) = build(RuleKind::Include, include)?;
        let (exclude, exclude_ids) = build(RuleKind::Exclude, exclude)?;
        Ok(Rules {
            rules,
            exclude_dir,
            include,
            exclude,
            exclude_dir_ids,
            include_ids,
            exclude_ids,
        })
    }

    /// Every rule, `exclude_dir` first, then `include`, then `exclude`: the
    /// order in which they decide.
    #[must_use]
    pub fn list(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether no rule is set (everything is backed up).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What the list says of `path`; `is_dir` because `exclude_dir` applies
    /// to directories only.
    #[must_use]
    pub fn decide(&self, path: &Path, is_dir: bool) -> Decision {
        let first = |set: &GlobSet, ids: &[usize]| {
            set.matches(path)
                .first()
                .map(|&i| self.rules[ids[i]].clone())
        };
        if is_dir && let Some(rule) = first(&self.exclude_dir, &self.exclude_dir_ids) {
            return Decision::Excluded(rule);
        }
        let included = first(&self.include, &self.include_ids);
        if included.is_some() {
            return Decision::Included(included);
        }
        match first(&self.exclude, &self.exclude_ids) {
            Some(rule) => Decision::Excluded(rule),
            None => Decision::Included(None),
        }
    }

    /// What a backup does with `path`, taking its directories into account:
    /// a path below a directory the list leaves out is left out with it
    /// (the walk never enters that directory), by that directory's rule.
    /// For `query inclexcl --test` and for a backup's own root.
    #[must_use]
    pub fn decide_in_tree(&self, path: &Path, is_dir: bool) -> Decision {
        let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
        ancestors.reverse();
        for dir in ancestors {
            if let Decision::Excluded(rule) = self.decide(dir, true) {
                return Decision::Excluded(rule);
            }
        }
        self.decide(path, is_dir)
    }

    /// Whether a path can be left out by name alone, before it is looked at
    /// (`exclude` without an `include`): saves a `stat` per excluded entry.
    #[must_use]
    pub fn excluded_by_name(&self, path: &Path) -> bool {
        self.exclude.is_match(path) && !self.include.is_match(path)
    }

    /// Whether an `exclude_dir` rule matches `path` (a directory).
    #[must_use]
    pub fn excluded_dir(&self, path: &Path) -> bool {
        self.exclude_dir.is_match(path)
    }

    /// Whether any `exclude_dir` rule exists (then directories need their
    /// type known before they are decided).
    #[must_use]
    pub fn has_exclude_dir(&self) -> bool {
        !self.exclude_dir.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    fn rules(dirs: &[&str], include: &[&str], exclude: &[&str]) -> Rules {
        Rules::new(&strings(dirs), &strings(include), &strings(exclude)).unwrap()
    }

    #[test]
    fn no_rules_include_everything() {
        let r = rules(&[], &[], &[]);
        assert_eq!(r.decide(Path::new("/a/b"), false), Decision::Included(None));
        assert!(r.is_empty());
    }

    #[test]
    fn include_brings_back_what_exclude_leaves_out() {
        let r = rules(&[], &["/data/keep", "/data/keep/**"], &["/data/**"]);
        assert!(!r.decide(Path::new("/data/other"), true).is_included());
        assert!(!r.decide(Path::new("/data/x.txt"), false).is_included());
        assert!(r.decide(Path::new("/data/keep"), true).is_included());
        let kept = r.decide(Path::new("/data/keep/a/b.txt"), false);
        assert_eq!(
            kept,
            Decision::Included(Some(Rule {
                kind: RuleKind::Include,
                pattern: "/data/keep/**".into()
            }))
        );
        assert!(r.decide(Path::new("/data"), true).is_included());
    }

    #[test]
    fn exclude_dir_wins_over_include_and_only_for_directories() {
        let r = rules(&["**/cache"], &["**/cache"], &[]);
        let d = r.decide(Path::new("/home/u/cache"), true);
        assert!(
            matches!(
                d,
                Decision::Excluded(Rule {
                    kind: RuleKind::ExcludeDir,
                    ..
                })
            ),
            "{d:?}"
        );
        assert!(r.decide(Path::new("/home/u/cache"), false).is_included());
    }

    #[test]
    fn a_path_below_an_excluded_directory_is_excluded_with_it() {
        let r = rules(&["**/.cache"], &["/data/keep/**"], &["/data/**"]);
        let below_cache = r.decide_in_tree(Path::new("/home/u/.cache/x"), false);
        assert!(
            matches!(
                &below_cache,
                Decision::Excluded(Rule {
                    kind: RuleKind::ExcludeDir,
                    ..
                })
            ),
            "{below_cache:?}"
        );
        // /data/keep itself is excluded, so what is below it is never seen.
        let kept = r.decide_in_tree(Path::new("/data/keep/a.txt"), false);
        assert_eq!(
            kept,
            Decision::Excluded(Rule {
                kind: RuleKind::Exclude,
                pattern: "/data/**".into()
            })
        );
        assert!(
            r.decide_in_tree(Path::new("/home/u/notes"), false)
                .is_included()
        );
    }

    #[test]
    fn a_bad_pattern_names_its_option_and_itself() {
        let e = Rules::new(&[], &strings(&["a[", "ok"]), &[]).unwrap_err();
        assert_eq!(e.option, "include");
        assert_eq!(e.pattern, "a[");
        assert!(
            e.to_string().contains("include pattern \"a[\" is invalid"),
            "{e}"
        );
    }

    #[test]
    fn the_list_is_in_deciding_order() {
        let r = rules(&["/d"], &["/i"], &["/e"]);
        let kinds: Vec<_> = r.list().iter().map(|x| x.kind).collect();
        assert_eq!(
            kinds,
            [RuleKind::ExcludeDir, RuleKind::Include, RuleKind::Exclude]
        );
    }
}
