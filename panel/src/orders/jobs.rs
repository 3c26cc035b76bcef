//! What every provisioning job of a paid order carries ([`OrderJob`]), and the order's
//! completion: when the last of its jobs succeeds, its domain becomes ACTIVE and its customer
//! gets the welcome e-mail (once per order). The resource modules wrap [`OrderJob`] in their
//! own kinds (`ProvisionOrderZone`, `ProvisionOrderSite`, …) and call [`OrderJob::settled`]
//! from their success and failure hooks.

use mpanel_protocol::{DomainName, EmailAddress};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    app::AppState,
    catalog::limits::PlanLimits,
    dns::job::ProvisionOrderZone,
    domains,
    hosting::{job::ProvisionOrderSite, tls::ProvisionOrderCertificate},
    jobs::{
        dispatcher::DispatchError,
        payload::{JobPayload, JobRefs, SharedPayload},
    },
    mail::job::ProvisionOrderMailbox,
    model::{JobType, ProductType},
    notify,
    vps::job::ProvisionOrderVps,
};

/// One provisioning step of an order; each becomes a job carrying the order's [`OrderJob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStep {
    Zone,
    Site,
    Mailbox,
    Vps,
    /// The site's HTTPS certificate.
    Certificate,
}

impl OrderStep {
    /// The steps a product needs, in the order they should run.
    pub fn for_product(kind: ProductType, limits: &PlanLimits, has_domain: bool) -> Vec<OrderStep> {
        let mut steps = Vec::new();
        match kind {
            ProductType::SharedHosting => {
                steps.push(OrderStep::Zone);
                steps.push(OrderStep::Site);
                if limits.includes_mail() {
                    steps.push(OrderStep::Mailbox);
                }
                if limits.includes_ssl() {
                    steps.push(OrderStep::Certificate);
                }
            }
            ProductType::Email => {
                steps.push(OrderStep::Zone);
                steps.push(OrderStep::Mailbox);
            }
            ProductType::Dns => steps.push(OrderStep::Zone),
            ProductType::Vps => {
                if has_domain {
                    steps.push(OrderStep::Zone);
                }
                steps.push(OrderStep::Vps);
            }
            // Storage is an allocation, not a server-side resource yet.
            ProductType::Storage => {}
        }
        steps
    }

    /// The step of the same order this one waits for: the zone of a hosting order points its
    /// apex at the web server the site step chooses, and the certificate's challenge is
    /// fetched through that zone.
    pub fn runs_after(self) -> Option<OrderStep> {
        match self {
            OrderStep::Zone => Some(OrderStep::Site),
            OrderStep::Certificate => Some(OrderStep::Zone),
            _ => None,
        }
    }

    /// Whether the order is complete without this step's success: a site whose certificate
    /// cannot be had (yet) is live on HTTP, and its customer is told its `http://` address.
    pub fn optional(self) -> bool {
        self == OrderStep::Certificate
    }

    pub fn payload(self, order: OrderJob) -> JobPayload {
        match self {
            OrderStep::Zone => ProvisionOrderZone(order).into(),
            OrderStep::Site => ProvisionOrderSite(order).into(),
            OrderStep::Mailbox => ProvisionOrderMailbox(order).into(),
            OrderStep::Vps => ProvisionOrderVps(order).into(),
            OrderStep::Certificate => ProvisionOrderCertificate(order).into(),
        }
    }

    pub fn job_type(self) -> JobType {
        match self {
            OrderStep::Zone => JobType::ProvisionDns,
            OrderStep::Site => JobType::ProvisionHosting,
            OrderStep::Mailbox => JobType::ProvisionMail,
            OrderStep::Vps => JobType::ProvisionVps,
            OrderStep::Certificate => JobType::ProvisionHosting,
        }
    }
}

/// A job kind of one step of an order: [`OrderJob`] is its payload, and its success may
/// complete the order. `|state, job, order| body` is its executor.
macro_rules! order_kind {
    ($(#[$doc:meta])* $name:ident as $type:ident, |$state:ident, $job:ident, $order:ident| $run:expr $(,)?) => {
        $crate::jobs::payload::newtype_kind!(
            $(#[$doc])* $name($crate::orders::jobs::OrderJob) as $type,
            |$state, $job, $order| $run,
            on_success = |tx, state, order| order.settled(tx, state).await,
            on_failed = |tx, state, order| order.settled(tx, state).await,
        );
    };
}
pub(crate) use order_kind;

/// The order's facts its jobs need, written once when the order is placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderJob {
    pub order_id: Uuid,
    pub subscription_id: Uuid,
    pub customer_id: Uuid,
    pub customer_email: EmailAddress,
    pub domain_id: Option<Uuid>,
    pub domain: Option<DomainName>,
    pub plan_id: Uuid,
    pub plan_slug: String,
    pub product_type: ProductType,
    #[serde(default)]
    pub limits: PlanLimits,
}

impl SharedPayload for OrderJob {
    fn refs(&self) -> JobRefs {
        JobRefs::default()
            .domain(self.domain_id)
            .subscription(self.subscription_id)
    }
}

impl OrderJob {
    /// The order's domain and its id; an order without one cannot have this job.
    pub fn domain(&self) -> Result<(&DomainName, Uuid), DispatchError> {
        match (&self.domain, self.domain_id) {
            (Some(name), Some(id)) => Ok((name, id)),
            _ => Err(DispatchError::Permanent(
                "the order has no domain for this job".into(),
            )),
        }
    }

    /// One of the order's jobs succeeded or failed for good (its row already says so in
    /// `tx`): the order is complete once each of its jobs succeeded, an optional one
    /// ([`OrderStep::optional`]) having possibly failed.
    pub async fn settled(&self, tx: &mut PgConnection, state: &AppState) -> sqlx::Result<()> {
        // Jobs of one order finishing at once would each still see the others RUNNING
        // (uncommitted), and none would find the order complete: the order's row lock makes
        // them look one after the other.
        sqlx::query("SELECT id FROM orders WHERE id = $1 FOR UPDATE")
            .bind(self.order_id)
            .fetch_optional(&mut *tx)
            .await?;
        let complete: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE order_id = $1 AND status <> 'SUCCESS'
                                   AND NOT (optional AND status = 'FAILED'))",
        )
        .bind(self.order_id)
        .fetch_one(&mut *tx)
        .await?;
        if !complete {
            return Ok(());
        }
        // The order's domain is live once every job of the order has succeeded ...
        if let Some(domain_id) = self.domain_id {
            domains::store::activate(tx, domain_id).await?;
        }
        // ... and its customer hears of it (queue_welcome deduplicates), also when the order
        // reused a domain that was already live.
        notify::queue_welcome(tx, &state.sealer, &state.config, self.order_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosting_plan_gets_its_certificate_after_its_zone_unless_it_says_no() {
        let ssl = PlanLimits {
            emails: Some(1),
            ..PlanLimits::default()
        };
        let steps = OrderStep::for_product(ProductType::SharedHosting, &ssl, true);
        assert_eq!(
            steps,
            [
                OrderStep::Zone,
                OrderStep::Site,
                OrderStep::Mailbox,
                OrderStep::Certificate
            ]
        );
        assert_eq!(OrderStep::Certificate.runs_after(), Some(OrderStep::Zone));
        assert_eq!(OrderStep::Certificate.job_type(), JobType::ProvisionHosting);
        let plain = PlanLimits {
            ssl: Some(false),
            ..PlanLimits::default()
        };
        let plain = OrderStep::for_product(ProductType::SharedHosting, &plain, true);
        assert_eq!(plain, [OrderStep::Zone, OrderStep::Site]);
        let mail = OrderStep::for_product(ProductType::Email, &ssl, true);
        assert!(
            !mail.contains(&OrderStep::Certificate),
            "no site, no certificate"
        );
    }
}
