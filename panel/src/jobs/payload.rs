//! Typed job payloads: one struct per job kind, each implementing [`JobKind`], gathered into
//! the [`JobPayload`] enum by [`job_kinds!`] (the list lives in `crate::job_kinds`).
//!
//! Invariants:
//! - A job's spec type (`jobs.type`) is derived from its payload, never chosen beside it, so
//!   the two cannot disagree; a stored row whose payload does not decode to its type fails
//!   permanently instead of running.
//! - The payload is stored in `jobs.payload` as the struct's JSON plus a `kind` tag. What SQL
//!   must find (the domain, account, zone … a job is about) is copied into typed columns by
//!   [`JobRefs`] at insert; no SQL or Rust reads a payload by string key.

use std::future::Future;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::dispatcher::{DispatchError, JobToRun};
use crate::{app::AppState, auth::permissions::Action, model::JobType};

/// The rows a job is about: the typed, indexed columns of `jobs` that queries filter on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JobRefs {
    pub domain_id: Option<Uuid>,
    pub subscription_id: Option<Uuid>,
    pub hosting_account_id: Option<Uuid>,
    pub mail_account_id: Option<Uuid>,
    pub dns_zone_id: Option<Uuid>,
    pub backup_job_id: Option<Uuid>,
    pub vps_id: Option<Uuid>,
}

impl JobRefs {
    pub fn domain(self, id: impl Into<Option<Uuid>>) -> Self {
        JobRefs {
            domain_id: id.into(),
            ..self
        }
    }

    pub fn subscription(self, id: Uuid) -> Self {
        JobRefs {
            subscription_id: Some(id),
            ..self
        }
    }

    pub fn hosting_account(self, id: Uuid) -> Self {
        JobRefs {
            hosting_account_id: Some(id),
            ..self
        }
    }

    pub fn mail_account(self, id: Uuid) -> Self {
        JobRefs {
            mail_account_id: Some(id),
            ..self
        }
    }

    pub fn dns_zone(self, id: Uuid) -> Self {
        JobRefs {
            dns_zone_id: Some(id),
            ..self
        }
    }

    pub fn backup_job(self, id: Uuid) -> Self {
        JobRefs {
            backup_job_id: Some(id),
            ..self
        }
    }

    pub fn vps(self, id: Uuid) -> Self {
        JobRefs {
            vps_id: Some(id),
            ..self
        }
    }
}

/// One kind of job: its payload, the spec type it is stored under, and its executor.
pub trait JobKind:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// The spec's `JobType` (several kinds may share one, e.g. a site's and a mailbox's
    /// suspension are both SUSPEND_ACCOUNT).
    const TYPE: JobType;

    /// The rows this job is about.
    fn refs(&self) -> JobRefs;

    /// Does the work (normally: commands to agents) and returns the job's `result`.
    fn run(
        &self,
        state: &AppState,
        job: &JobToRun,
    ) -> impl Future<Output = Result<Value, DispatchError>> + Send;

    /// The permission an operator needs beyond `JobsRetry` to run this job again: the one
    /// that creating it needs (`None`: retrying it is routine, e.g. an order's provisioning).
    fn requires(&self) -> Option<Action> {
        None
    }

    /// The payload as operators see it (`GET /api/jobs`): what is stored, less any secret
    /// (a password hash travels to the agent but is nobody's business in the API).
    fn public_view(&self) -> Value {
        serde_json::to_value(self).expect("job payloads always serialize")
    }

    /// Bookkeeping inside the transaction that records the job's success (whatever ran it,
    /// the fleet or the simulate dispatcher).
    fn on_success(
        &self,
        _tx: &mut PgConnection,
        _state: &AppState,
        _job: &JobToRun,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Bookkeeping inside the transaction that records the job's final failure (no attempt
    /// left, or a permanent error).
    fn on_failed(
        &self,
        _tx: &mut PgConnection,
        _state: &AppState,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// A payload several kinds share (see [`newtype_kind!`]): the rows it is about, and how
/// operators see it.
pub trait SharedPayload: Serialize {
    fn refs(&self) -> JobRefs;

    fn public_view(&self) -> Value {
        serde_json::to_value(self).expect("job payloads always serialize")
    }
}

/// A job kind that wraps a payload other kinds share (an order's [`OrderJob`], a site or
/// mailbox reference): stored as the inner payload, its refs the inner's `refs()`.
/// `requires Perm` names the permission that creating it needs (asked again to retry it),
/// `|state, job, inner| body` is its executor; `on_success = |tx, state, inner| body`
/// optionally its success hook (an order's kinds, which need no permission beyond retrying),
/// and `on_failed = …` then its final failure's.
///
/// [`OrderJob`]: crate::orders::jobs::OrderJob
macro_rules! newtype_kind {
    ($(#[$doc:meta])* $name:ident($inner:ty) as $type:ident, requires $perm:ident,
     |$state:ident, $job:ident, $p:ident| $run:expr $(,)?) => {
        $crate::jobs::payload::newtype_kind!(@kind $(#[$doc])* $name($inner) as $type,
            |$state, $job, $p| $run, {
                fn requires(&self) -> Option<$crate::auth::permissions::Action> {
                    Some($crate::auth::permissions::Action::$perm)
                }
            });
    };
    ($(#[$doc:meta])* $name:ident($inner:ty) as $type:ident,
     |$state:ident, $job:ident, $p:ident| $run:expr,
     on_success = |$tx:ident, $st:ident, $q:ident| $hook:expr
     $(, on_failed = |$ftx:ident, $fst:ident, $fq:ident| $fhook:expr)? $(,)?) => {
        $crate::jobs::payload::newtype_kind!(@kind $(#[$doc])* $name($inner) as $type,
            |$state, $job, $p| $run, {
                async fn on_success(
                    &self,
                    $tx: &mut sqlx::PgConnection,
                    $st: &$crate::app::AppState,
                    _job: &$crate::jobs::dispatcher::JobToRun,
                ) -> sqlx::Result<()> {
                    let $q = &self.0;
                    $hook
                }
                $(
                async fn on_failed(
                    &self,
                    $ftx: &mut sqlx::PgConnection,
                    $fst: &$crate::app::AppState,
                ) -> sqlx::Result<()> {
                    let $fq = &self.0;
                    $fhook
                }
                )?
            });
    };
    (@kind $(#[$doc:meta])* $name:ident($inner:ty) as $type:ident,
     |$state:ident, $job:ident, $p:ident| $run:expr, { $($hook:tt)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl $crate::jobs::payload::JobKind for $name {
            const TYPE: $crate::model::JobType = $crate::model::JobType::$type;

            fn refs(&self) -> $crate::jobs::payload::JobRefs {
                $crate::jobs::payload::SharedPayload::refs(&self.0)
            }

            fn public_view(&self) -> serde_json::Value {
                $crate::jobs::payload::SharedPayload::public_view(&self.0)
            }

            async fn run(
                &self,
                $state: &$crate::app::AppState,
                $job: &$crate::jobs::dispatcher::JobToRun,
            ) -> Result<serde_json::Value, $crate::jobs::dispatcher::DispatchError> {
                let $p = &self.0;
                $run
            }

            $($hook)*
        }
    };
}
pub(crate) use newtype_kind;

/// Builds [`JobPayload`] from `Variant(Type) = "tag"` lines: the serde-tagged enum, its
/// dispatch to each kind's executor and hook, and `From<Type>` for each.
macro_rules! job_kinds {
    ($($variant:ident($ty:ty) = $tag:literal,)+) => {
        /// Every job kind's payload, stored in `jobs.payload` with its `kind` tag.
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "kind")]
        pub enum JobPayload {
            $(#[serde(rename = $tag)] $variant($ty),)+
        }

        impl JobPayload {
            /// Every kind's tag, in declaration order.
            pub const KINDS: &[&str] = &[$($tag),+];

            pub fn job_type(&self) -> $crate::model::JobType {
                use $crate::jobs::payload::JobKind;
                match self { $(Self::$variant(_) => <$ty as JobKind>::TYPE,)+ }
            }

            pub fn kind(&self) -> &'static str {
                match self { $(Self::$variant(_) => $tag,)+ }
            }

            pub fn refs(&self) -> $crate::jobs::payload::JobRefs {
                use $crate::jobs::payload::JobKind;
                match self { $(Self::$variant(p) => p.refs(),)+ }
            }

            /// The permission needed, beyond `JobsRetry`, to run the job again.
            pub fn requires(&self) -> Option<$crate::auth::permissions::Action> {
                use $crate::jobs::payload::JobKind;
                match self { $(Self::$variant(p) => p.requires(),)+ }
            }

            /// What `GET /api/jobs` shows: the stored payload (with its `kind`) less secrets.
            pub fn public_view(&self) -> serde_json::Value {
                use $crate::jobs::payload::JobKind;
                let (mut view, kind) = match self { $(Self::$variant(p) => (p.public_view(), $tag),)+ };
                if let serde_json::Value::Object(fields) = &mut view {
                    fields.insert("kind".to_owned(), kind.into());
                }
                view
            }

            pub async fn run(
                &self,
                state: &$crate::app::AppState,
                job: &$crate::jobs::dispatcher::JobToRun,
            ) -> Result<serde_json::Value, $crate::jobs::dispatcher::DispatchError> {
                use $crate::jobs::payload::JobKind;
                match self { $(Self::$variant(p) => p.run(state, job).await,)+ }
            }

            pub async fn on_success(
                &self,
                tx: &mut sqlx::PgConnection,
                state: &$crate::app::AppState,
                job: &$crate::jobs::dispatcher::JobToRun,
            ) -> sqlx::Result<()> {
                use $crate::jobs::payload::JobKind;
                match self { $(Self::$variant(p) => p.on_success(tx, state, job).await,)+ }
            }

            pub async fn on_failed(
                &self,
                tx: &mut sqlx::PgConnection,
                state: &$crate::app::AppState,
            ) -> sqlx::Result<()> {
                use $crate::jobs::payload::JobKind;
                match self { $(Self::$variant(p) => p.on_failed(tx, state).await,)+ }
            }
        }

        $(impl From<$ty> for JobPayload {
            fn from(p: $ty) -> Self { Self::$variant(p) }
        })+
    };
}
pub(crate) use job_kinds;

pub use crate::job_kinds::JobPayload;

/// A stored payload that does not match its row (hand-edited, or from a build that knew
/// another kind).
#[derive(Debug, thiserror::Error)]
pub enum StoredPayloadError {
    #[error("the job's payload does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the job's payload is a {kind} job, but the job's type is {stored:?}")]
    TypeMismatch { kind: &'static str, stored: JobType },
}

impl JobPayload {
    /// The payload of a stored row, checked against the row's type.
    pub fn from_stored(stored: JobType, payload: Value) -> Result<JobPayload, StoredPayloadError> {
        let payload: JobPayload = serde_json::from_value(payload)?;
        if payload.job_type() != stored {
            return Err(StoredPayloadError::TypeMismatch {
                kind: payload.kind(),
                stored,
            });
        }
        Ok(payload)
    }

    /// The JSON stored in `jobs.payload`.
    pub fn to_stored(&self) -> Value {
        serde_json::to_value(self).expect("job payloads always serialize")
    }
}
