//! The Redis side of the job queue: one stream, one consumer group.
//!
//! Why a stream with a consumer group: each message goes to one worker and stays in the
//! group's pending list until that worker acknowledges it, so a worker that dies mid-job
//! leaves its message behind for `XAUTOCLAIM` — unlike a list popped with BRPOP, where a
//! crash loses the item. Several `mpanel worker` processes share the group. Messages carry
//! only the job id: PostgreSQL holds the job, and a claim there decides who runs it, so a
//! duplicate message is harmless (delivery is at-least-once by design).

use std::time::Duration;

use redis::{
    AsyncCommands, RedisResult,
    streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply},
};
use uuid::Uuid;

use crate::redis::Redis;

pub const GROUP: &str = "workers";
/// Plenty for a backlog; trimming keeps a long-running Redis bounded.
const MAX_STREAM_LEN: usize = 100_000;

pub fn stream(redis: &Redis) -> String {
    redis.key("jobs:stream")
}

/// Pushes job ids to the stream.
pub async fn push(redis: &Redis, ids: &[Uuid]) -> RedisResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let key = stream(redis);
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_STREAM_LEN)
            .arg("*")
            .arg("job")
            .arg(id.to_string())
            .ignore();
    }
    pipe.query_async::<()>(&mut redis.conn()).await
}

/// Creates the stream and group if missing (also after Redis lost its data).
pub async fn ensure_group(redis: &Redis) -> RedisResult<()> {
    let result: RedisResult<()> = redis
        .conn()
        .xgroup_create_mkstream(stream(redis), GROUP, "0")
        .await;
    match result {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// One delivered message: the stream entry id and the job it names.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message_id: String,
    pub job_id: Option<Uuid>,
}

fn job_of(entry: &redis::streams::StreamId) -> Option<Uuid> {
    entry
        .get::<String>("job")
        .and_then(|s| Uuid::parse_str(&s).ok())
}

/// The next message for `consumer`: first one abandoned by a dead worker (idle longer than
/// `lease`), else a new one, waiting up to `block` for it.
pub async fn next(
    redis: &Redis,
    consumer: &str,
    lease: Duration,
    block: Duration,
) -> RedisResult<Option<Delivery>> {
    let key = stream(redis);
    let mut conn = redis.conn();
    let reclaimed: StreamAutoClaimReply = conn
        .xautoclaim_options(
            &key,
            GROUP,
            consumer,
            lease.as_millis() as u64,
            "0-0",
            StreamAutoClaimOptions::default().count(1),
        )
        .await?;
    if let Some(entry) = reclaimed.claimed.first() {
        return Ok(Some(Delivery {
            message_id: entry.id.clone(),
            job_id: job_of(entry),
        }));
    }
    let opts = StreamReadOptions::default()
        .group(GROUP, consumer)
        .count(1)
        .block(block.as_millis() as usize);
    let reply: Option<StreamReadReply> = redis
        .blocking_conn()
        .xread_options(&[&key], &[">"], &opts)
        .await?;
    Ok(reply
        .and_then(|r| r.keys.into_iter().next())
        .and_then(|k| k.ids.into_iter().next())
        .map(|entry| Delivery {
            job_id: job_of(&entry),
            message_id: entry.id,
        }))
}

pub async fn ack(redis: &Redis, message_id: &str) -> RedisResult<()> {
    redis
        .conn()
        .xack::<_, _, _, ()>(stream(redis), GROUP, &[message_id])
        .await
}

/// Resets a message's idle time, so other workers do not reclaim a job that is still
/// running here.
pub async fn touch(redis: &Redis, consumer: &str, message_id: &str) -> RedisResult<()> {
    redis::cmd("XCLAIM")
        .arg(stream(redis))
        .arg(GROUP)
        .arg(consumer)
        .arg(0)
        .arg(message_id)
        .arg("JUSTID")
        .query_async::<()>(&mut redis.conn())
        .await
}
