//! PROVISION_VPS: a VPS of a paid order, or an operator's action on one (create, start,
//! stop, reboot, destroy). No agent role drives a hypervisor yet, so each ends at once as a
//! permanent "unsupported" failure that names the action — never silently as a success.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::permissions::Action,
    jobs::{
        dispatcher::{DispatchError, JobToRun},
        payload::{JobKind, JobRefs},
    },
    model::JobType,
    orders::jobs::order_kind,
};

fn unsupported(action: &str) -> DispatchError {
    DispatchError::Permanent(format!(
        "unsupported: VPS '{action}' needs a hypervisor and no mPanel agent role drives \
         one yet; the server answers no VPS commands"
    ))
}

order_kind!(
    /// PROVISION_VPS for a paid order.
    ProvisionOrderVps as ProvisionVps,
    |_state, _job, _order| Err(unsupported("create")),
);

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

    fn requires(&self) -> Option<Action> {
        Some(match self.action.as_str() {
            "destroy" => Action::VpsDestroy,
            "create" => Action::VpsWrite,
            _ => Action::VpsPower,
        })
    }

    fn refs(&self) -> JobRefs {
        JobRefs::default().vps(self.vps_id)
    }

    async fn run(&self, _state: &AppState, _job: &JobToRun) -> Result<Value, DispatchError> {
        Err(unsupported(&self.action))
    }
}
