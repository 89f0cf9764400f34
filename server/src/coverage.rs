//! QUERY COVERAGE (issue 23): for every filespace this server holds, whether
//! a copy of it lives on another server and how old the newest one is.
//! Seed 000's first rule is that every folder has a copy elsewhere; this is
//! the check an operator runs from cron to know it holds.
//!
//! The figures are the ones replication keeps: a filespace's last
//! replication is recorded (as of the run's start) only when its last
//! backup had ended by then, so "copy at or after the last backup" means
//! the other server has everything this one acknowledged.

use crate::catalog::Catalog;
use crate::error::ServerError;
use crate::model::{ReplMode, ReplState};

/// Where a filespace's data stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Another server holds a copy that includes the last backup.
    Current,
    /// Another server holds a copy, older than the last backup here.
    Behind,
    /// No other server holds a copy.
    Uncovered,
    /// This server holds the copy: the node is a replica here, and its
    /// source is the server to ask about it.
    Replica,
    /// Nothing was ever backed up here to copy.
    Empty,
}

impl Coverage {
    /// The word listings show.
    pub fn word(self) -> &'static str {
        match self {
            Coverage::Current => "current",
            Coverage::Behind => "behind",
            Coverage::Uncovered => "uncovered",
            Coverage::Replica => "replica",
            Coverage::Empty => "empty",
        }
    }

    /// Judges one filespace from its node's role here, the end of its last
    /// backup and its last replication (Unix ns, 0 for never).
    pub fn of(role: ReplMode, last_backup_end_ns: i64, copy_ns: i64) -> Coverage {
        if role == ReplMode::Receive {
            return Coverage::Replica;
        }
        if copy_ns == 0 {
            return if last_backup_end_ns == 0 {
                Coverage::Empty
            } else {
                Coverage::Uncovered
            };
        }
        if copy_ns >= last_backup_end_ns {
            Coverage::Current
        } else {
            Coverage::Behind
        }
    }
}

/// One filespace's coverage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverageRow {
    /// The node.
    pub node: String,
    /// The filespace; empty for a node with none.
    pub filespace: String,
    /// The node's role here: `send`, `receive` or `none`.
    pub role: ReplMode,
    /// Whether replication of the node is enabled.
    pub replstate: ReplState,
    /// The other server: the node's replication partner, else the
    /// replication server a run would use; empty when there is none.
    pub partner: String,
    /// End of the last complete backup here, Unix ns (0: none).
    pub last_backup_end_ns: i64,
    /// The newest copy on the other server (its last replication), Unix ns.
    pub copy_ns: i64,
    /// The verdict.
    pub coverage: Coverage,
}

/// The coverage of every filespace of `node` (all nodes when empty).
///
/// # Errors
/// [`ServerError::NodeNotFound`] for a named node that is not registered;
/// catalog errors.
pub fn report(
    catalog: &Catalog,
    node: &str,
    replserver: &str,
) -> Result<Vec<CoverageRow>, ServerError> {
    let nodes = catalog.list_nodes(node)?;
    if !node.is_empty() && nodes.is_empty() {
        return Err(ServerError::NodeNotFound {
            node: node.to_string(),
        });
    }
    let mut rows = Vec::new();
    for (n, _) in nodes {
        let partner = if !n.repl_server.is_empty() {
            n.repl_server.clone()
        } else if n.replstate == ReplState::Enabled {
            replserver.to_string()
        } else {
            String::new()
        };
        let filespaces = catalog.list_filespaces(n.id)?;
        if filespaces.is_empty() {
            rows.push(CoverageRow {
                node: n.name.clone(),
                filespace: String::new(),
                role: n.replmode,
                replstate: n.replstate,
                partner: partner.clone(),
                last_backup_end_ns: 0,
                copy_ns: 0,
                coverage: Coverage::of(n.replmode, 0, 0),
            });
        }
        for f in filespaces {
            rows.push(CoverageRow {
                node: n.name.clone(),
                filespace: f.name,
                role: n.replmode,
                replstate: n.replstate,
                partner: partner.clone(),
                last_backup_end_ns: f.last_backup_end_ns,
                copy_ns: f.last_repl_ns,
                coverage: Coverage::of(n.replmode, f.last_backup_end_ns, f.last_repl_ns),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(Coverage::of(ReplMode::Send, 100, 150), Coverage::Current);
        assert_eq!(Coverage::of(ReplMode::Send, 100, 100), Coverage::Current);
        assert_eq!(Coverage::of(ReplMode::Send, 200, 150), Coverage::Behind);
        assert_eq!(Coverage::of(ReplMode::None, 200, 0), Coverage::Uncovered);
        assert_eq!(Coverage::of(ReplMode::None, 0, 0), Coverage::Empty);
        assert_eq!(Coverage::of(ReplMode::Receive, 200, 0), Coverage::Replica);
    }
}
