//! What a plan includes, as stored in `plans.limits_json` and carried by its order's jobs.

use mpanel_protocol::PhpVersion;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// What a plan includes (spec: `{ diskGb, bandwidthGb, sites, emails }`), plus the PHP
/// version its sites get. Unknown keys are refused so a typo cannot silently sell nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlanLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_gb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sites: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emails: Option<u32>,
    /// `MAJOR.MINOR`, such as `8.3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = r"^[5-9]\.[0-9]{1,2}$")]
    pub php_version: Option<PhpVersion>,
    /// Whether an order's site gets an HTTPS certificate (ACME, through its web agent).
    /// Absent: yes, as for every shared-hosting plan; `false` sells a site on HTTP only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl: Option<bool>,
}

impl PlanLimits {
    /// Stored limits of a plan; rows written before validation existed read as empty.
    pub fn from_stored(value: Option<&Value>) -> PlanLimits {
        value
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    pub fn includes_mail(&self) -> bool {
        self.emails.is_some_and(|n| n > 0)
    }

    /// Every plan unless it says `ssl: false` (only shared hosting has a site to certify).
    pub fn includes_ssl(&self) -> bool {
        self.ssl != Some(false)
    }
}
