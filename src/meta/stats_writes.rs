//! The statements of one part of a statistics flush, the same on both databases: the hourly
//! counters added in one upsert, the tokens' last use in one update, the access times in one
//! more. A statement per kind of row rather than per row: on SQLite they run as one script
//! (see [`super::statement`]), on PostgreSQL as the statements of one transaction.

use super::statement::{Statement, Value};
use super::{AccessUpdate, Counters, StatsBatch};
use std::collections::{BTreeMap, HashMap};

/// How the statements of a part number their parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Numbering {
    /// Each from `$1` (PostgreSQL).
    EachFromOne,
    /// On from the statement before, for one script (SQLite).
    Continued,
}

/// Misses found evicted, by `(namespace, hour, token label)`: added to `misses_evicted`.
pub(super) type EvictedMisses<'a> = HashMap<(&'a str, i64, &'a str), i64>;

/// The statements of `batch`, in the order they run; none for an empty batch.
pub(super) fn statements<'a>(
    batch: &'a StatsBatch,
    evicted: &EvictedMisses<'_>,
    numbering: Numbering,
) -> Vec<Statement<'a>> {
    let mut statements: Vec<Statement<'a>> = Vec::new();
    let next = |statements: &Vec<Statement<'a>>| match (numbering, statements.last()) {
        (Numbering::Continued, Some(last)) => Statement::numbered_from(last.next_param()),
        _ => Statement::numbered_from(1),
    };
    if !batch.counters.is_empty() {
        let statement = add_counters(next(&statements), batch, evicted);
        statements.push(statement);
    }
    if !batch.token_uses.is_empty() {
        let statement = note_token_uses(next(&statements), &batch.token_uses);
        statements.push(statement);
    }
    if !batch.accesses.is_empty() {
        let statement = update_accesses(next(&statements), &batch.accesses);
        statements.push(statement);
    }
    statements
}

/// Adds the counters to their hourly rows, one row per key (PostgreSQL refuses an upsert that
/// meets the same row twice).
fn add_counters<'a>(mut statement: Statement<'a>, batch: &'a StatsBatch, evicted: &EvictedMisses<'_>) -> Statement<'a> {
    let mut rows: BTreeMap<(&str, i64, &str), Counters> = BTreeMap::new();
    for row in &batch.counters {
        let key = (row.namespace.as_str(), row.hour, row.token_label.as_str());
        rows.entry(key).or_default().add(&row.counters);
    }
    let mut values = Vec::with_capacity(rows.len());
    for ((namespace, hour, token_label), c) in rows {
        let newly_evicted = evicted.get(&(namespace, hour, token_label)).copied().unwrap_or(0);
        let params = [
            Value::Text(namespace),
            Value::Integer(hour),
            Value::Text(token_label),
            Value::Integer(c.hits),
            Value::Integer(c.misses),
            Value::Integer(c.writes),
            Value::Integer(c.bytes_served),
            Value::Integer(c.bytes_received),
            Value::Integer(c.errors),
            Value::Integer(c.conflicting_writes),
            Value::Integer(c.misses_evicted + newly_evicted),
            Value::Integer(c.same_meaning_writes),
        ]
        .map(|value| statement.param(value));
        values.push(format!("({})", params.join(", ")));
    }
    statement.sql = format!(
        "INSERT INTO stats_hourly (namespace, hour, token_label, hits, misses, writes, \
         bytes_served, bytes_received, errors, conflicting_writes, misses_evicted, same_meaning_writes) \
         VALUES {} \
         ON CONFLICT (namespace, hour, token_label) DO UPDATE SET \
         hits = stats_hourly.hits + excluded.hits, misses = stats_hourly.misses + excluded.misses, \
         misses_evicted = stats_hourly.misses_evicted + excluded.misses_evicted, \
         writes = stats_hourly.writes + excluded.writes, bytes_served = stats_hourly.bytes_served + excluded.bytes_served, \
         bytes_received = stats_hourly.bytes_received + excluded.bytes_received, errors = stats_hourly.errors + excluded.errors, \
         conflicting_writes = stats_hourly.conflicting_writes + excluded.conflicting_writes, \
         same_meaning_writes = stats_hourly.same_meaning_writes + excluded.same_meaning_writes",
        values.join(", ")
    );
    statement
}

/// Moves each token's last use forward to the latest of `uses` (never back).
fn note_token_uses<'a>(mut statement: Statement<'a>, uses: &[(i64, i64)]) -> Statement<'a> {
    let mut latest: BTreeMap<i64, i64> = BTreeMap::new();
    for &(id, used_at) in uses {
        let at = latest.entry(id).or_insert(used_at);
        *at = (*at).max(used_at);
    }
    let rows: Vec<String> = latest
        .into_iter()
        .map(|(id, at)| {
            let (id, at) = (statement.param(Value::Integer(id)), statement.param(Value::Integer(at)));
            format!("({id}, {at})")
        })
        .collect();
    statement.sql = format!(
        "UPDATE tokens SET last_used_at = \
         CASE WHEN tokens.last_used_at IS NULL OR tokens.last_used_at < v.column2 THEN v.column2 ELSE tokens.last_used_at END \
         FROM (VALUES {}) AS v WHERE tokens.id = v.column1",
        rows.join(", ")
    );
    statement
}

/// Sets the access times and adds the hit counts of the entries, one row per entry (an
/// `UPDATE … FROM` applies one row of its list to an entry, whichever): the later of the
/// entry's own and the latest access, and the sum of the hits. In key order, so that
/// concurrent flushes on PostgreSQL lock rows in the same order. Both databases search
/// `entries` by its primary key for each row of the list.
fn update_accesses<'a>(mut statement: Statement<'a>, accesses: &'a [AccessUpdate]) -> Statement<'a> {
    let mut merged: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
    for a in accesses {
        let (at, hits) = merged
            .entry((a.namespace.as_str(), a.key.as_str()))
            .or_insert((a.last_access_at, 0));
        *at = (*at).max(a.last_access_at);
        *hits += a.hits;
    }
    let rows: Vec<String> = merged
        .into_iter()
        .map(|((namespace, key), (at, hits))| {
            let params = [
                Value::Text(namespace),
                Value::Text(key),
                Value::Integer(at),
                Value::Integer(hits),
            ]
            .map(|value| statement.param(value));
            format!("({})", params.join(", "))
        })
        .collect();
    statement.sql = format!(
        "UPDATE entries SET \
         last_access_at = CASE WHEN v.column3 > entries.last_access_at THEN v.column3 ELSE entries.last_access_at END, \
         hit_count = entries.hit_count + v.column4 \
         FROM (VALUES {}) AS v WHERE entries.namespace = v.column1 AND entries.key = v.column2",
        rows.join(", ")
    );
    statement
}
