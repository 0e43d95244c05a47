//! Group commit of the two writes every PUT makes on SQLite: claiming its blob
//! ([`super::MetadataStore::insert_pending_blob`]) and committing its entry
//! ([`super::MetadataStore::commit_entry`]).
//!
//! SQLite writes one transaction at a time, and every statement crosses to the connection's
//! thread and back: under concurrent uploads those thread hand-offs, not the writing, were
//! the cost of a PUT. So one task takes every write queued meanwhile and runs them together:
//! all queued claims as one multi-row `INSERT`, all queued commits as one script of five
//! statements in one transaction. Each caller gets exactly the answer it would have got
//! alone; when a batch fails (a namespace deleted under one of its uploads), its writes are
//! run again one by one, so that only the one at fault fails.

use super::sqlite_writer::{Writer, WriterSlot};
use super::writer_holds::{Work, WriterHolds};
use super::{entry_write_error, NewEntry, PutOutcome, Rewrite};
use crate::blob::BlobInfo;
use crate::{Error, Result};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};

/// Most writes in one batch (an entry commit binds six parameters).
const MAX_BATCH: usize = 64;

/// Hands the writes of PUTs to the batching task.
#[derive(Debug)]
pub struct PutWrites {
    queue: mpsc::UnboundedSender<Job>,
}

/// A blob an upload wants to publish.
struct Claim {
    blob: BlobInfo,
    now: i64,
    reply: oneshot::Sender<Result<bool>>,
}

/// An entry to point at a published blob.
struct Commit {
    namespace: String,
    key: String,
    hash: String,
    size: i64,
    writer_token_id: Option<i64>,
    now: i64,
    reply: oneshot::Sender<Result<PutOutcome>>,
}

enum Job {
    Claim(Claim),
    Commit(Commit),
}

impl PutWrites {
    /// Starts the batching task on a thread of its own. It ends when this handle is dropped.
    pub fn start(writer: Writer, holds: WriterHolds) -> PutWrites {
        let (queue, jobs) = mpsc::unbounded_channel();
        super::writer_lane::spawn("hearth-sqlite-uploads", run(writer, holds, jobs));
        PutWrites { queue }
    }

    /// See [`super::MetadataStore::insert_pending_blob`].
    pub async fn claim(&self, blob: &BlobInfo, now: i64) -> Result<bool> {
        let (reply, answer) = oneshot::channel();
        self.submit(
            Job::Claim(Claim {
                blob: blob.clone(),
                now,
                reply,
            }),
            answer,
        )
        .await
    }

    /// See [`super::MetadataStore::commit_entry`].
    pub async fn commit(&self, entry: &NewEntry<'_>) -> Result<PutOutcome> {
        let (reply, answer) = oneshot::channel();
        let commit = Commit {
            namespace: entry.namespace.to_owned(),
            key: entry.key.to_owned(),
            hash: entry.blob.hash.clone(),
            size: entry.blob.raw_size as i64,
            writer_token_id: entry.writer_token_id,
            now: entry.now,
            reply,
        };
        self.submit(Job::Commit(commit), answer).await
    }

    async fn submit<T>(&self, job: Job, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        let gone = || Error::db("writing")(sqlx::Error::WorkerCrashed);
        self.queue.send(job).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(writer: Writer, holds: WriterHolds, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let (mut claims, mut commits) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Claim(claim) => claims.push(claim),
                Job::Commit(commit) => commits.push(commit),
            }
            if claims.len() + commits.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        let mut slot = writer.lock().await;
        let _held = holds.start(Work::Uploads);
        settle(&mut slot, claims).await;
        settle(&mut slot, commits).await;
    }
}

/// One kind of batched write.
trait Write: Sized {
    type Output;
    /// Runs the writes together on the writer's connection; the answers in order.
    async fn run_batch(slot: &mut WriterSlot, batch: &[Self]) -> Result<Vec<Self::Output>>;
    fn answer(self, result: Result<Self::Output>);
}

/// Runs a batch and answers its callers; a failed batch is retried write by write.
async fn settle<W: Write>(slot: &mut WriterSlot, batch: Vec<W>) {
    if batch.is_empty() {
        return;
    }
    match W::run_batch(slot, &batch).await {
        Ok(outputs) => batch.into_iter().zip(outputs).for_each(|(w, out)| w.answer(Ok(out))),
        Err(e) if batch.len() == 1 => {
            if let Some(write) = batch.into_iter().next() {
                write.answer(Err(e));
            }
        }
        Err(_) => {
            for write in batch {
                let result = W::run_batch(slot, std::slice::from_ref(&write)).await;
                write.answer(result.map(|mut outputs| outputs.remove(0)));
            }
        }
    }
}

/// `$n, $n+1, …`: the numbered parameters of one write's row.
fn params(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Write for Claim {
    type Output = bool;

    async fn run_batch(slot: &mut WriterSlot, batch: &[Claim]) -> Result<Vec<bool>> {
        let conn = slot.ready().await?;
        let rows: Vec<String> = (0..batch.len())
            .map(|i| {
                let n = 6 * i + 1;
                format!(
                    "(${n}, ${}, ${}, ${}, 'pending', ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 4,
                    n + 5
                )
            })
            .collect();
        // A claim succeeds on a new row, or on a pending one whose age it resets.
        let sql = format!(
            "INSERT INTO blobs (hash, raw_size, stored_size, encoding, state, created_at, last_referenced_at, meaning) \
             VALUES {} ON CONFLICT (hash) DO UPDATE SET created_at = excluded.created_at \
             WHERE blobs.state = 'pending' RETURNING hash",
            rows.join(", ")
        );
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(&*sql));
        for claim in batch {
            query = query
                .bind(&claim.blob.hash)
                .bind(claim.blob.raw_size as i64)
                .bind(claim.blob.stored_size as i64)
                .bind(claim.blob.encoding.as_str())
                .bind(claim.now)
                .bind(claim.blob.meaning.map(|m| m.to_hex()));
        }
        let claimed: HashSet<String> = query
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::db("recording pending blob"))?
            .into_iter()
            .collect();
        Ok(batch.iter().map(|c| claimed.contains(&c.blob.hash)).collect())
    }

    fn answer(self, result: Result<bool>) {
        let _ = self.reply.send(result);
    }
}

impl Write for Commit {
    type Output = Result<PutOutcome>;

    /// One transaction: the hashes the keys held, the blobs marked valid (not those being
    /// deleted), then every entry whose blob is valid inserted or replaced. Which write got
    /// which outcome follows from the first two answers, in the writes' order.
    async fn run_batch(slot: &mut WriterSlot, batch: &[Commit]) -> Result<Vec<Result<PutOutcome>>> {
        let row = |i: usize| params(6 * i + 1, 6);
        let keys: Vec<String> = (0..batch.len())
            .map(|i| format!("(${}, ${})", 6 * i + 1, 6 * i + 2))
            .collect();
        let hashes: Vec<String> = (0..batch.len()).map(|i| format!("${}", 6 * i + 3)).collect();
        let rows: Vec<String> = (0..batch.len()).map(|i| format!("({})", row(i))).collect();
        let now = 6 * batch.len() + 1;
        let sql = format!(
            "BEGIN IMMEDIATE;
             SELECT 'previous', e.namespace, e.key, e.blob_hash, b.meaning
                 FROM entries e LEFT JOIN blobs b ON b.hash = e.blob_hash WHERE (e.namespace, e.key) IN (VALUES {keys});
             UPDATE blobs SET state = 'valid', last_referenced_at = ${now} WHERE hash IN ({hashes}) AND state <> 'deleting'
                 RETURNING 'valid', hash, meaning, NULL, NULL;
             INSERT INTO entries (namespace, key, blob_hash, size, writer_token_id, created_at, last_access_at, hit_count)
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column6, 0
                 FROM (VALUES {rows}) AS v
                 WHERE EXISTS (SELECT 1 FROM blobs WHERE hash = v.column3 AND state = 'valid')
                 ON CONFLICT (namespace, key) DO UPDATE SET blob_hash = excluded.blob_hash, size = excluded.size,
                     writer_token_id = excluded.writer_token_id, created_at = excluded.created_at,
                     last_access_at = excluded.last_access_at;
             COMMIT;",
            keys = keys.join(", "),
            hashes = hashes.join(", "),
            rows = rows.join(", "),
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(&*sql));
        for commit in batch {
            query = query
                .bind(&commit.namespace)
                .bind(&commit.key)
                .bind(&commit.hash)
                .bind(commit.size)
                .bind(commit.writer_token_id)
                .bind(commit.now);
        }
        let newest = batch.iter().map(|c| c.now).max().unwrap_or_default();
        let rows: Vec<SqliteRow> = match slot.fetch_script(query.bind(newest)).await? {
            Ok(rows) => rows,
            Err(e) => return Err(entry_write_error(e, &batch[0].namespace)),
        };
        // (namespace, key) -> (hash, meaning) it holds; blob hash -> meaning, of valid blobs.
        let mut held: HashMap<(String, String), (String, Option<String>)> = HashMap::new();
        let mut valid: HashMap<String, Option<String>> = HashMap::new();
        for row in &rows {
            let field = |i: usize| row.try_get::<Option<String>, _>(i).ok().flatten();
            let text = |i: usize| field(i).unwrap_or_default();
            match text(0).as_str() {
                "previous" => {
                    held.insert((text(1), text(2)), (text(3), field(4)));
                }
                "valid" => {
                    valid.insert(text(1), field(2));
                }
                _ => {}
            }
        }
        // A blob being deleted fails its own write only: its entry was not inserted.
        Ok(batch
            .iter()
            .map(|c| {
                let Some(meaning) = valid.get(&c.hash) else {
                    return Err(Error::BlobUnavailable(c.hash.clone()));
                };
                let now_held = (c.hash.clone(), meaning.clone());
                Ok(match held.insert((c.namespace.clone(), c.key.clone()), now_held) {
                    None => PutOutcome::Created,
                    Some((old, old_meaning)) => PutOutcome::Replaced(Rewrite::between(
                        (&old, old_meaning.as_deref()),
                        (&c.hash, meaning.as_deref()),
                    )),
                })
            })
            .collect())
    }

    fn answer(self, result: Result<Result<PutOutcome>>) {
        let _ = self.reply.send(result.and_then(|outcome| outcome));
    }
}
