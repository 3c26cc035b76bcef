//! Enums of the schema (spec §5), shared by SQL (`sqlx::Type`, PostgreSQL enum types) and
//! JSON (the spec's SCREAMING_CASE strings).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "user_role", rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserRole {
    SuperAdmin,
    Admin,
    Support,
    Billing,
    ReadOnly,
}

impl UserRole {
    pub const ALL: [UserRole; 5] = [
        UserRole::SuperAdmin,
        UserRole::Admin,
        UserRole::Support,
        UserRole::Billing,
        UserRole::ReadOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::SuperAdmin => "SUPER_ADMIN",
            UserRole::Admin => "ADMIN",
            UserRole::Support => "SUPPORT",
            UserRole::Billing => "BILLING",
            UserRole::ReadOnly => "READ_ONLY",
        }
    }
}

impl fmt::Display for UserRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UserRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UserRole::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "'{s}' is not a role (use one of {})",
                    UserRole::ALL.map(UserRole::as_str).join(", ")
                )
            })
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "server_role", rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerRole {
    Web,
    Mail,
    Dns,
    Panel,
    Db,
    Storage,
}

macro_rules! db_enum {
    ($(#[$doc:meta])* $name:ident as $sql:literal { $($variant:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
        #[sqlx(type_name = $sql, rename_all = "SCREAMING_SNAKE_CASE")]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($variant),* }
    };
}

db_enum!(ProductType as "product_type" { SharedHosting, Vps, Email, Dns, Storage });
db_enum!(OrderStatus as "order_status" { Pending, Paid, Failed, Cancelled, Refunded });
db_enum!(SubscriptionStatus as "subscription_status" { Active, PastDue, Cancelled, Trialing, Inactive });
// What a subscription's resources should be, and why they are suspended (not in the spec:
// the lifecycle of the subscription's resources, beside its billing status).
db_enum!(ServiceState as "service_state" { Active, Suspended, Terminated });
db_enum!(SuspendReason as "suspend_reason" { NonPayment, Cancelled, Operator });
db_enum!(DomainStatus as "domain_status" { Active, Suspended, PendingSetup, PendingTransfer });
db_enum!(JobStatus as "job_status" { Pending, Running, Success, Failed });
db_enum!(BillingInterval as "billing_interval" { Monthly, Yearly });
db_enum!(HostingStatus as "hosting_status" { Active, Suspended, Terminated, Pending });
db_enum!(MailStatus as "mail_status" { Active, Disabled, Pending });
db_enum!(VpsStatus as "vps_status" { Pending, Running, Stopped, Suspended, Terminated });
db_enum!(BackupType as "backup_type" { System, ClientSite, Database });
db_enum!(BackupStatus as "backup_status" { Pending, Running, Success, Failed });
db_enum!(
    /// What a job does; each becomes one typed command for one server's agent.
    JobType as "job_type" {
        ProvisionHosting, ProvisionDns, ProvisionMail, ProvisionVps,
        SuspendAccount, UnsuspendAccount, TerminateAccount,
        RunBackup,
    }
);
