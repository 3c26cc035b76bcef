//! The one permission table (role × action) of spec §11. Every route of every module asks it,
//! through the `Require<perm::X>` extractor; nothing else in the code compares roles.
//!
//! - SUPER_ADMIN: everything.
//! - ADMIN: everything except system-level actions (tenants, the certificate authority,
//!   revoking agents).
//! - SUPPORT: read, plus limited operational writes; never delete, deactivate or terminate.
//! - BILLING: orders, subscriptions, customers, invoices (and reading the catalog they sell).
//! - READ_ONLY: reads only.

use std::{marker::PhantomData, ops::Deref};

use axum::{extract::FromRequestParts, http::request::Parts};

use super::current::CurrentUser;
use crate::{app::AppState, http::error::ApiError, model::UserRole};

macro_rules! actions {
    ($($(#[$doc:meta])* $name:ident => $what:literal,)*) => {
        /// Everything an operator can be allowed to do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action { $($(#[$doc])* $name,)* }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$name,)*];

            /// Words for the 403 message: "you do not have permission to …".
            pub fn describe(self) -> &'static str {
                match self { $(Action::$name => $what,)* }
            }
        }

        /// One marker type per action, for `Require<perm::ServersRead>`.
        pub mod perm {
            $(
                pub struct $name;
                impl super::Permission for $name {
                    const ACTION: super::Action = super::Action::$name;
                }
            )*
        }
    };
}

actions! {
    TenantsRead => "view tenants",
    TenantsWrite => "create or change tenants",
    TenantsDeactivate => "deactivate tenants",
    UsersRead => "view users",
    UsersWrite => "create or change users",
    UsersDeactivate => "deactivate users",
    AuditRead => "view the audit log",
    ServersRead => "view servers",
    ServersWrite => "create or change servers",
    ServersDelete => "delete servers",
    /// Issue enrollment tokens for the tenant's own servers.
    AgentsEnroll => "enroll agents",
    /// System-level: cutting an agent off the fleet.
    AgentsRevoke => "revoke agents",
    /// System-level: the panel's certificate authority.
    CaManage => "manage the certificate authority",
    CatalogRead => "view products and plans",
    CatalogWrite => "create or change products and plans",
    CustomersRead => "view customers",
    CustomersWrite => "create or change customers",
    OrdersRead => "view orders",
    OrdersWrite => "change orders (cancel, refund)",
    SubscriptionsRead => "view subscriptions",
    SubscriptionsWrite => "change or cancel subscriptions",
    SubscriptionsLifecycle => "terminate or reactivate subscriptions and set their lifecycle policy",
    DomainsRead => "view domains",
    InvoicesRead => "view invoices",
    JobsRead => "view jobs",
    JobsRetry => "retry jobs",
    DnsRead => "view DNS zones",
    DnsWrite => "create or change DNS zones and records",
    DnsSync => "sync DNS zones",
    HostingRead => "view hosting accounts",
    HostingWrite => "create hosting accounts",
    HostingSuspend => "suspend or unsuspend hosting accounts",
    HostingTerminate => "terminate hosting accounts",
    HostingCertificates => "issue HTTPS certificates for hosting accounts",
    VpsRead => "view VPS instances",
    VpsWrite => "create VPS instances",
    VpsPower => "start, stop or reboot VPS instances",
    VpsDestroy => "destroy VPS instances",
    MailRead => "view mail accounts",
    MailWrite => "create mail accounts",
    MailManage => "disable mail accounts or reset their passwords",
    BackupsRead => "view backups",
    BackupsRun => "rerun backups",
}

/// The table. Read it as: which roles may do this?
pub fn roles_allowed(action: Action) -> &'static [UserRole] {
    use Action::*;
    use UserRole::*;
    const EVERYONE: &[UserRole] = &[SuperAdmin, Admin, Support, Billing, ReadOnly];
    const OPERATORS_READ: &[UserRole] = &[SuperAdmin, Admin, Support, ReadOnly];
    const BILLING_READ: &[UserRole] = &[SuperAdmin, Admin, Support, Billing, ReadOnly];
    const ADMINS: &[UserRole] = &[SuperAdmin, Admin];
    const ADMINS_AND_SUPPORT: &[UserRole] = &[SuperAdmin, Admin, Support];
    const ADMINS_AND_BILLING: &[UserRole] = &[SuperAdmin, Admin, Billing];
    const SYSTEM: &[UserRole] = &[SuperAdmin];
    match action {
        TenantsRead | TenantsWrite | TenantsDeactivate | AgentsRevoke | CaManage => SYSTEM,

        UsersRead | AuditRead | ServersRead | JobsRead | DnsRead | HostingRead | VpsRead
        | MailRead | BackupsRead => OPERATORS_READ,

        UsersWrite
        | UsersDeactivate
        | ServersWrite
        | ServersDelete
        | AgentsEnroll
        | CatalogWrite
        | DnsWrite
        | HostingWrite
        | HostingTerminate
        | VpsWrite
        | VpsDestroy
        | MailWrite
        | SubscriptionsLifecycle => ADMINS,

        // Support's limited writes: operational actions that undo cleanly.
        JobsRetry | DnsSync | HostingSuspend | HostingCertificates | VpsPower | MailManage
        | BackupsRun => ADMINS_AND_SUPPORT,

        CatalogRead => EVERYONE,
        CustomersRead | OrdersRead | SubscriptionsRead | InvoicesRead | DomainsRead => BILLING_READ,
        CustomersWrite | OrdersWrite | SubscriptionsWrite => ADMINS_AND_BILLING,
    }
}

pub fn allows(role: UserRole, action: Action) -> bool {
    roles_allowed(action).contains(&role)
}

pub trait Permission {
    const ACTION: Action;
}

/// An authenticated operator whose role allows `P`; otherwise the request ends with 401
/// (no or bad token) or 403 (role not allowed), before the handler runs.
pub struct Require<P: Permission> {
    pub user: CurrentUser,
    _perm: PhantomData<P>,
}

impl<P: Permission> Deref for Require<P> {
    type Target = CurrentUser;
    fn deref(&self) -> &CurrentUser {
        &self.user
    }
}

impl<P: Permission + Send + Sync> FromRequestParts<AppState> for Require<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        if !allows(user.role, P::ACTION) {
            return Err(ApiError::Forbidden(P::ACTION.describe().to_owned()));
        }
        Ok(Require {
            user,
            _perm: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn super_admin_may_do_everything() {
        assert!(Action::ALL.iter().all(|a| allows(UserRole::SuperAdmin, *a)));
    }

    #[test]
    fn admin_may_do_everything_but_system_actions() {
        for a in Action::ALL {
            let system = matches!(
                a,
                Action::TenantsRead
                    | Action::TenantsWrite
                    | Action::TenantsDeactivate
                    | Action::AgentsRevoke
                    | Action::CaManage
            );
            assert_eq!(allows(UserRole::Admin, *a), !system, "{a:?}");
        }
    }

    #[test]
    fn support_never_deletes_or_terminates() {
        for a in [
            Action::UsersDeactivate,
            Action::ServersDelete,
            Action::HostingTerminate,
            Action::VpsDestroy,
            Action::TenantsDeactivate,
            Action::SubscriptionsWrite,
            Action::SubscriptionsLifecycle,
            Action::OrdersWrite,
        ] {
            assert!(!allows(UserRole::Support, a), "{a:?}");
        }
    }

    #[test]
    fn read_only_only_reads() {
        for a in Action::ALL {
            if allows(UserRole::ReadOnly, *a) {
                assert!(format!("{a:?}").ends_with("Read"), "READ_ONLY may {a:?}");
            }
        }
    }

    #[test]
    fn billing_sells_but_touches_no_infrastructure() {
        for a in [
            Action::OrdersWrite,
            Action::SubscriptionsWrite,
            Action::CustomersWrite,
        ] {
            assert!(allows(UserRole::Billing, a));
        }
        for a in [
            Action::ServersRead,
            Action::ServersWrite,
            Action::UsersRead,
            Action::JobsRetry,
        ] {
            assert!(!allows(UserRole::Billing, a), "{a:?}");
        }
    }
}
