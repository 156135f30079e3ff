//! Stored log frames, replayed in `seq` order to subscribers that connect late or resume
//! with `?since=`. A frame keeps the exact bytes the command wrote (column `bytes`); rows
//! stored before schema v2 have only their text (`data`), which reads back as its bytes.

use rusqlite::{ffi, params, ErrorCode, TransactionBehavior};

use super::{Store, StoreError, StoredFrame};
use crate::db::SqliteHandle;

/// Whether `error` is the primary-key violation a second frame with the same seq causes.
fn is_duplicate_key(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(
            ffi::Error {
                code: ErrorCode::ConstraintViolation,
                extended_code: ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
            },
            _
        )
    )
}

impl Store {
    /// Stores a batch of frames of one job in a single transaction: all of them or, on
    /// error, none. A `seq` already stored is [`StoreError::DuplicateFrame`], a stream
    /// other than `stdout`/`stderr` is [`StoreError::InvalidStream`], an unknown job is
    /// [`StoreError::JobNotFound`].
    pub(crate) async fn append_frames(
        &self,
        job_id: &str,
        frames: &[StoredFrame],
    ) -> Result<(), StoreError> {
        if frames.is_empty() {
            return Ok(());
        }
        let job_id = job_id.to_owned();
        let frames = frames.to_vec();
        self.spawn(move |store| store.append_frames_blocking(&job_id, &frames))
            .await
    }

    /// Blocking twin of [`Store::append_frames`].
    pub(super) fn append_frames_blocking(
        &self,
        job_id: &str,
        frames: &[StoredFrame],
    ) -> Result<(), StoreError> {
        if let Some(frame) = frames
            .iter()
            .find(|frame| frame.stream != "stdout" && frame.stream != "stderr")
        {
            return Err(StoreError::InvalidStream {
                job_id: job_id.to_owned(),
                seq: frame.seq,
                stream: frame.stream.clone(),
            });
        }
        if frames.is_empty() {
            return Ok(());
        }
        let sql = self.sql_error("store frames", Some(job_id));
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&sql)?;
            let exists = tx
                .query_row(
                    "SELECT count(*) FROM jobs WHERE job_id = ?1",
                    [job_id],
                    |row| row.get::<_, i64>(0),
                )
                .map_err(&sql)?;
            if exists == 0 {
                return Err(self.not_found(job_id));
            }
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO frames (job_id, seq, stream, data, bytes, timestamp_ms) \
                         VALUES (?1, ?2, ?3, '', ?4, ?5)",
                    )
                    .map_err(&sql)?;
                for frame in frames {
                    insert
                        .execute(params![
                            job_id,
                            frame.seq,
                            frame.stream,
                            frame.data,
                            frame.timestamp_ms
                        ])
                        .map_err(|error| {
                            if is_duplicate_key(&error) {
                                StoreError::DuplicateFrame {
                                    job_id: job_id.to_owned(),
                                    seq: frame.seq,
                                }
                            } else {
                                sql(error)
                            }
                        })?;
                }
            }
            tx.commit().map_err(&sql)
        })
    }

    /// The job's stored frames with `seq > since_seq`, in `seq` order (`0` for all).
    pub(crate) async fn frames_since(
        &self,
        job_id: &str,
        since_seq: i64,
    ) -> Result<Vec<StoredFrame>, StoreError> {
        let job_id = job_id.to_owned();
        self.spawn(move |store| store.frames_since_blocking(&job_id, since_seq))
            .await
    }

    /// Blocking twin of [`Store::frames_since`].
    pub(super) fn frames_since_blocking(
        &self,
        job_id: &str,
        since_seq: i64,
    ) -> Result<Vec<StoredFrame>, StoreError> {
        let sql = self.sql_error("read frames", Some(job_id));
        self.with_conn(|conn| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT seq, stream, coalesce(bytes, CAST(data AS BLOB)), timestamp_ms \
                     FROM frames \
                     WHERE job_id = ?1 AND seq > ?2 ORDER BY seq",
                )
                .map_err(&sql)?;
            let frames = statement
                .query_map(params![job_id, since_seq], |row| {
                    Ok(StoredFrame {
                        seq: row.get(0)?,
                        stream: row.get(1)?,
                        data: row.get(2)?,
                        timestamp_ms: row.get(3)?,
                    })
                })
                .map_err(&sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&sql)?;
            Ok(frames)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::job_rows::tests::{new_job, open};

    fn frame(seq: i64, stream: &str, data: &str) -> StoredFrame {
        StoredFrame {
            seq,
            stream: stream.to_owned(),
            data: data.as_bytes().to_vec(),
            timestamp_ms: 1_000 + seq,
        }
    }

    fn seqs(frames: &[StoredFrame]) -> Vec<i64> {
        frames.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn frames_come_back_in_seq_order_whatever_the_insert_order() {
        let (_dir, store) = open();
        store
            .insert_job_blocking(new_job("j", "c", 1))
            .expect("insert");
        store
            .insert_job_blocking(new_job("other", "c", 1))
            .expect("insert");
        store
            .append_frames_blocking("j", &[frame(3, "stdout", "c"), frame(1, "stderr", "a")])
            .expect("append");
        store
            .append_frames_blocking(
                "j",
                &[frame(2, "stdout", "b\u{FFFD}\n"), frame(10, "stdout", "")],
            )
            .expect("append");
        store
            .append_frames_blocking("other", &[frame(1, "stdout", "not mine")])
            .expect("append");

        let all = store.frames_since_blocking("j", 0).expect("frames");
        assert_eq!(seqs(&all), [1, 2, 3, 10]);
        assert_eq!(all[0], frame(1, "stderr", "a"));
        assert_eq!(all[1].data, "b\u{FFFD}\n".as_bytes());
        assert_eq!(
            seqs(&store.frames_since_blocking("j", 2).expect("since")),
            [3, 10]
        );
        assert!(store
            .frames_since_blocking("j", 10)
            .expect("since")
            .is_empty());
        assert!(store
            .frames_since_blocking("missing", 0)
            .expect("since")
            .is_empty());
    }

    #[test]
    fn a_bad_batch_stores_nothing() {
        let (_dir, store) = open();
        store
            .insert_job_blocking(new_job("j", "c", 1))
            .expect("insert");
        store
            .append_frames_blocking("j", &[frame(1, "stdout", "a")])
            .expect("append");

        let err = store
            .append_frames_blocking("j", &[frame(2, "stdout", "b"), frame(1, "stdout", "again")])
            .expect_err("duplicate seq");
        assert!(
            matches!(err, StoreError::DuplicateFrame { seq: 1, .. }),
            "{err:?}"
        );
        assert_eq!(
            seqs(&store.frames_since_blocking("j", 0).expect("frames")),
            [1]
        );

        let err = store
            .append_frames_blocking("j", &[frame(2, "stdout", "b"), frame(3, "stdin", "c")])
            .expect_err("bad stream");
        assert!(
            matches!(err, StoreError::InvalidStream { seq: 3, .. }),
            "{err:?}"
        );
        assert_eq!(
            seqs(&store.frames_since_blocking("j", 0).expect("frames")),
            [1]
        );

        let err = store
            .append_frames_blocking("ghost", &[frame(1, "stdout", "a")])
            .expect_err("unknown job");
        assert!(matches!(err, StoreError::JobNotFound { .. }), "{err:?}");
        store.append_frames_blocking("j", &[]).expect("empty batch");
    }

    #[tokio::test]
    async fn async_append_and_read() {
        let (_dir, store) = open();
        store
            .insert_job(new_job("j", "c", 1))
            .await
            .expect("insert");
        let batch: Vec<_> = (1..=100)
            .map(|seq| frame(seq, "stdout", "line\n"))
            .collect();
        store.append_frames("j", &batch).await.expect("append");
        let stored = store.frames_since("j", 50).await.expect("since");
        assert_eq!(seqs(&stored), (51..=100).collect::<Vec<_>>());
    }

    #[test]
    fn bytes_that_are_not_utf8_come_back_exactly() {
        let (_dir, store) = open();
        store
            .insert_job_blocking(new_job("j", "c", 1))
            .expect("insert");
        let bytes = b"\xff\xfe\x00tar\xc3".to_vec();
        let stored = StoredFrame {
            data: bytes.clone(),
            ..frame(1, "stdout", "")
        };
        store
            .append_frames_blocking("j", &[stored])
            .expect("append");
        let back = store.frames_since_blocking("j", 0).expect("frames");
        assert_eq!(back[0].data, bytes);
    }

    #[test]
    fn a_frame_stored_as_text_before_v2_reads_back_as_its_bytes() {
        let (_dir, store) = open();
        store
            .insert_job_blocking(new_job("j", "c", 1))
            .expect("insert");
        store
            .with_conn(|conn| {
                conn.execute(
                    "INSERT INTO frames (job_id, seq, stream, data, timestamp_ms) \
                     VALUES ('j', 1, 'stdout', 'old text \u{2713}', 5)",
                    [],
                )
                .map_err(store.sql_error("insert", None))
            })
            .expect("v1 row");
        let back = store.frames_since_blocking("j", 0).expect("frames");
        assert_eq!(back[0].data, "old text \u{2713}".as_bytes());
    }
}
