//! PROVISION_VPS: a VPS of a paid order, or an operator's action on one (create, start,
//! stop, reboot, destroy). No agent role drives a hypervisor yet, so each ends at once as a
//! permanent "unsupported" failure that names the action — never silently as a success.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    app::AppState,
    jobs::{
        dispatcher::{DispatchError, JobToRun},
        payload::{JobKind, JobRefs},
    },
    model::JobType,
    orders::jobs::OrderJob,
};

fn unsupported(action: &str) -> DispatchError {
    DispatchError::Permanent(format!(
        "unsupported: VPS '{action}' needs a hypervisor and no mPanel agent role drives \
         one yet; the server answers no VPS commands"
    ))
}

/// PROVISION_VPS for a paid order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProvisionOrderVps(pub OrderJob);

impl JobKind for ProvisionOrderVps {
    const TYPE: JobType = JobType::ProvisionVps;

    fn refs(&self) -> JobRefs {
        self.0.refs()
    }

    async fn run(&self, _state: &AppState, _job: &JobToRun) -> Result<Value, DispatchError> {
        Err(unsupported("create"))
    }

    async fn on_success(
        &self,
        tx: &mut PgConnection,
        state: &AppState,
        _job: &JobToRun,
    ) -> sqlx::Result<()> {
        self.0.succeeded(tx, state).await
    }
}

/// An operator's action on a VPS instance (`/api/vps/{id}/…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VpsAction {
    pub vps_id: Uuid,
    pub server_id: Uuid,
    /// create, start, stop, reboot or destroy.
    pub action: String,
    pub requested_by: Uuid,
}

impl JobKind for VpsAction {
    const TYPE: JobType = JobType::ProvisionVps;

    fn refs(&self) -> JobRefs {
        JobRefs {
            vps_id: Some(self.vps_id),
            ..JobRefs::default()
        }
    }

    async fn run(&self, _state: &AppState, _job: &JobToRun) -> Result<Value, DispatchError> {
        Err(unsupported(&self.action))
    }
}
