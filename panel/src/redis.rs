//! Redis: carries work and presence, never truth. The connection is lazy and reconnects by
//! itself, so the panel starts and keeps answering while Redis is down (orders still commit
//! to PostgreSQL; a sweeper refills the queue later).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;

use crate::config::RedisConfig;

#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    /// Blocking reads (the worker's XREADGROUP BLOCK) hold their connection until they
    /// return; on the shared multiplexed connection they would stall every other command.
    blocking: ConnectionManager,
    prefix: Arc<str>,
}

impl Redis {
    pub fn new(cfg: &RedisConfig) -> anyhow::Result<Redis> {
        let client = redis::Client::open(cfg.url.expose_secret())
            .context("REDIS_URL is not a valid Redis URL")?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_cfg.clone())
            .context("creating the Redis connection manager")?;
        let blocking = ConnectionManager::new_lazy_with_config(client, manager_cfg)
            .context("creating the Redis connection manager")?;
        Ok(Redis {
            conn,
            blocking,
            prefix: cfg.key_prefix.as_str().into(),
        })
    }

    /// The full name of one of our keys.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A handle for commands; cheap to clone, multiplexed over one connection.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The connection for blocking commands only (their wait must stay below the 5s
    /// response timeout).
    pub fn blocking_conn(&self) -> ConnectionManager {
        self.blocking.clone()
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut c = self.conn();
        redis::cmd("PING").query_async::<String>(&mut c).await?;
        Ok(())
    }
}
