//! Client schedules, their associations with nodes, and the outcomes
//! clients report (`schedules`, `associations`, `schedule_events`).

use rusqlite::{OptionalExtension, Row, params};

use super::Catalog;
use crate::error::{CatalogError, ServerError};
use crate::schedule::{ExpectedRun, MAX_EVENTS, Reported, Schedule, Window, event_state};

/// Reported outcomes older than this are forgotten when a new one arrives.
const EVENT_KEEP_NS: i64 = 90 * 24 * 3600 * 1_000_000_000;

fn schedule_of(row: &Row<'_>) -> rusqlite::Result<Schedule> {
    let objects: String = row.get(2)?;
    Ok(Schedule {
        name: row.get(0)?,
        action: row.get(1)?,
        objects: serde_json::from_str(&objects).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?,
        start_ns: row.get(3)?,
        period_secs: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
        duration_secs: u64::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
        pre_command: row.get(6)?,
        post_command: row.get(7)?,
    })
}

const SCHEDULE_COLUMNS: &str =
    "name, action, objects, start_ns, period_secs, duration_secs, pre_command, post_command";

/// Lets a `schedules` table made before the `db-backup` action hold it:
/// its CHECK is widened by rebuilding the table (SQLite cannot alter a
/// CHECK), rows kept. Foreign keys are off meanwhile, so dropping the old
/// table does not cascade to the associations. Returns whether it ran.
///
/// # Errors
/// SQLite errors; the rebuild is one transaction.
pub(crate) fn widen_schedule_actions(conn: &mut rusqlite::Connection) -> rusqlite::Result<bool> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'schedules'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if sql.is_none_or(|sql| sql.contains("'db-backup'")) {
        return Ok(false);
    }
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let rebuilt = (|| {
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE schedules_widened (
                 name          TEXT PRIMARY KEY,
                 action        TEXT NOT NULL
                     CHECK (action IN ('incremental', 'selective', 'db-backup', 'command')),
                 objects       TEXT NOT NULL,
                 start_ns      INTEGER NOT NULL,
                 period_secs   INTEGER NOT NULL,
                 duration_secs INTEGER NOT NULL,
                 pre_command   TEXT NOT NULL DEFAULT '',
                 post_command  TEXT NOT NULL DEFAULT '',
                 defined_ns    INTEGER NOT NULL
             );
             INSERT INTO schedules_widened SELECT name, action, objects, start_ns,
                 period_secs, duration_secs, pre_command, post_command, defined_ns
                 FROM schedules;
             DROP TABLE schedules;
             ALTER TABLE schedules_widened RENAME TO schedules;",
        )?;
        tx.commit()
    })();
    conn.pragma_update(None, "foreign_keys", "ON")?;
    rebuilt.map(|()| true)
}

impl Catalog {
    /// Defines `schedule` (checked by the caller).
    ///
    /// # Errors
    /// [`ServerError::AlreadyExists`] for a name in use; SQLite errors.
    pub fn define_schedule(&self, schedule: &Schedule, now_ns: i64) -> Result<(), ServerError> {
        let objects = serde_json::to_string(&schedule.objects)
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        let inserted = self.conn().execute(
            // Only a name in use is ignored (and reported below); any other
            // constraint that fails is an error of its own.
            "INSERT INTO schedules (name, action, objects, start_ns, period_secs,
                 duration_secs, pre_command, post_command, defined_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (name) DO NOTHING",
            params![
                schedule.name,
                schedule.action,
                objects,
                schedule.start_ns,
                i64::try_from(schedule.period_secs).unwrap_or(i64::MAX),
                i64::try_from(schedule.duration_secs).unwrap_or(i64::MAX),
                schedule.pre_command,
                schedule.post_command,
                now_ns
            ],
        )?;
        if inserted == 0 {
            return Err(ServerError::AlreadyExists(format!(
                "schedule {} is defined already; `delete schedule {}` first to define it anew",
                schedule.name, schedule.name
            )));
        }
        Ok(())
    }

    /// Deletes schedule `name` with its associations; returns how many
    /// associations went, or `None` when there is no such schedule.
    /// Reported outcomes stay for `query event` until they age out.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_schedule(&self, name: &str) -> Result<Option<u64>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let associations = tx.execute("DELETE FROM associations WHERE schedule = ?1", [name])?;
        let removed = tx.execute("DELETE FROM schedules WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok((removed == 1).then_some(associations as u64))
    }

    /// Every schedule (or the one named), by name, with its nodes.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn schedules(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<(Schedule, Vec<String>)>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE ?1 IS NULL OR name = ?1 ORDER BY name"
        ))?;
        let schedules = stmt
            .query_map([name], schedule_of)?
            .collect::<Result<Vec<_>, _>>()?;
        let mut nodes_of =
            conn.prepare("SELECT node FROM associations WHERE schedule = ?1 ORDER BY node")?;
        let mut out = Vec::with_capacity(schedules.len());
        for schedule in schedules {
            let nodes = nodes_of
                .query_map([&schedule.name], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            out.push((schedule, nodes));
        }
        Ok(out)
    }

    /// The schedules node `node` is associated with.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn schedules_of_node(&self, node: &str) -> Result<Vec<Schedule>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM schedules s JOIN associations a ON a.schedule = s.name
             WHERE a.node = ?1 ORDER BY s.name",
            SCHEDULE_COLUMNS
                .split(", ")
                .map(|c| format!("s.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
        let rows = stmt
            .query_map([node], schedule_of)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Associates `nodes` with schedule `schedule` (or, with `remove`,
    /// ends their association); returns how many changed.
    ///
    /// # Errors
    /// [`ServerError::NotFound`] for an unknown schedule or node; SQLite
    /// errors. Nothing changes then.
    pub fn associate(
        &self,
        schedule: &str,
        nodes: &[String],
        remove: bool,
    ) -> Result<u64, ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let known: Option<i64> = tx
            .query_row("SELECT 1 FROM schedules WHERE name = ?1", [schedule], |r| {
                r.get(0)
            })
            .optional()?;
        if known.is_none() {
            return Err(ServerError::NotFound(format!(
                "schedule {schedule} is not defined; `query schedule` lists the schedules"
            )));
        }
        let mut changed = 0u64;
        for node in nodes {
            if remove {
                changed += tx.execute(
                    "DELETE FROM associations WHERE schedule = ?1 AND node = ?2",
                    params![schedule, node],
                )? as u64;
                continue;
            }
            let exists: Option<i64> = tx
                .query_row("SELECT id FROM nodes WHERE name = ?1", [node], |r| r.get(0))
                .optional()?;
            if exists.is_none() {
                return Err(ServerError::NodeNotFound { node: node.clone() });
            }
            changed += tx.execute(
                "INSERT OR IGNORE INTO associations (schedule, node) VALUES (?1, ?2)",
                params![schedule, node],
            )? as u64;
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Records what node `node` reported of its run of `schedule` in the
    /// window starting at `window_start_ns`: `started` first, then
    /// `completed` or `failed`. The first final outcome stands: a later
    /// report cannot turn a failed run into a completed one. Returns
    /// whether anything changed. Outcomes older than 90 days are forgotten
    /// meanwhile.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn record_schedule_event(
        &self,
        schedule: &str,
        node: &str,
        window_start_ns: i64,
        reported: &Reported,
        now_ns: i64,
    ) -> Result<bool, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "INSERT INTO schedule_events (schedule, node, window_start_ns, state, exit_code,
                 message, started_ns, ended_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (schedule, node, window_start_ns) DO UPDATE SET
                 state = excluded.state, exit_code = excluded.exit_code,
                 message = excluded.message, started_ns = excluded.started_ns,
                 ended_ns = excluded.ended_ns
             WHERE schedule_events.state = 'started'",
            params![
                schedule,
                node,
                window_start_ns,
                reported.state,
                reported.exit_code,
                reported.message,
                reported.started_ns,
                reported.ended_ns
            ],
        )?;
        tx.execute(
            "DELETE FROM schedule_events WHERE window_start_ns < ?1",
            [now_ns.saturating_sub(EVENT_KEEP_NS)],
        )?;
        tx.commit()?;
        Ok(changed > 0)
    }

    /// The outcome node `node` reported for `schedule`'s window starting at
    /// `window_start_ns`.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn schedule_event(
        &self,
        schedule: &str,
        node: &str,
        window_start_ns: i64,
    ) -> Result<Option<Reported>, CatalogError> {
        Ok(self
            .reader()
            .query_row(
                "SELECT state, exit_code, message, started_ns, ended_ns FROM schedule_events
                 WHERE schedule = ?1 AND node = ?2 AND window_start_ns = ?3",
                params![schedule, node, window_start_ns],
                |r| {
                    Ok(Reported {
                        state: r.get(0)?,
                        exit_code: r.get(1)?,
                        message: r.get(2)?,
                        started_ns: r.get(3)?,
                        ended_ns: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every expected run with a window starting in `[begin_ns, end_ns]`,
    /// of every association (or of `node`'s), by window start, with what
    /// its client reported: the soonest [`MAX_EVENTS`], and whether there
    /// were more.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn expected_runs(
        &self,
        begin_ns: i64,
        end_ns: i64,
        node: Option<&str>,
        now_ns: i64,
    ) -> Result<(Vec<ExpectedRun>, bool), CatalogError> {
        // The windows first, without looking anything up, keeping only the
        // soonest MAX_EVENTS (a bounded heap, whatever the range); only
        // those that have opened can have an outcome.
        let mut heap: std::collections::BinaryHeap<(i64, String, String, i64)> =
            std::collections::BinaryHeap::new();
        let mut truncated = false;
        for (schedule, nodes) in self.schedules(None)? {
            for who in nodes.iter().filter(|n| node.is_none_or(|want| want == *n)) {
                let windows = schedule.windows_between(begin_ns, end_ns, MAX_EVENTS + 1);
                truncated |= windows.len() > MAX_EVENTS;
                for window in windows {
                    heap.push((
                        window.start_ns,
                        schedule.name.clone(),
                        who.clone(),
                        window.end_ns,
                    ));
                    if heap.len() > MAX_EVENTS {
                        heap.pop();
                        truncated = true;
                    }
                }
            }
        }
        let mut windows: Vec<(Window, String, String)> = heap
            .into_vec()
            .into_iter()
            .map(|(start_ns, schedule, who, end_ns)| (Window { start_ns, end_ns }, schedule, who))
            .collect();
        windows.sort_by(|a, b| (a.0.start_ns, &a.1, &a.2).cmp(&(b.0.start_ns, &b.1, &b.2)));
        let mut out = Vec::with_capacity(windows.len());
        for (window, schedule, who) in windows {
            let reported = if window.start_ns <= now_ns {
                self.schedule_event(&schedule, &who, window.start_ns)?
            } else {
                None
            };
            out.push(ExpectedRun {
                state: event_state(window, reported.as_ref(), now_ns),
                schedule,
                node: who,
                window,
                reported,
            });
        }
        Ok((out, truncated))
    }
}
