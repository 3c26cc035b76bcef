//! Every kind of job, once: the payload type (in its resource's `job.rs`, with its
//! executor) and the tag it is stored under in `jobs.payload.kind`. Adding a job kind is one
//! struct implementing `jobs::payload::JobKind` and one line here. Tags are stored: never
//! rename one (a migration would have to move the rows).

use crate::{backups, dns, hosting, jobs::payload::job_kinds, mail, subscriptions, vps};

job_kinds! {
    ProvisionOrderZone(dns::job::ProvisionOrderZone) = "orderZone",
    SyncZone(dns::job::SyncZone) = "syncZone",
    ProvisionOrderSite(hosting::job::ProvisionOrderSite) = "orderSite",
    CreateHostingAccount(hosting::job::CreateHostingAccount) = "createHostingAccount",
    SuspendSite(hosting::job::SuspendSite) = "suspendSite",
    UnsuspendSite(hosting::job::UnsuspendSite) = "unsuspendSite",
    TerminateSite(hosting::job::TerminateSite) = "terminateSite",
    ProvisionOrderMailbox(mail::job::ProvisionOrderMailbox) = "orderMailbox",
    CreateMailAccount(mail::job::CreateMailAccount) = "createMailAccount",
    ResetMailPassword(mail::job::ResetMailPassword) = "resetMailPassword",
    DisableMailbox(mail::job::DisableMailbox) = "disableMailbox",
    EnableMailbox(mail::job::EnableMailbox) = "enableMailbox",
    ProvisionOrderVps(vps::job::ProvisionOrderVps) = "orderVps",
    VpsAction(vps::job::VpsAction) = "vpsAction",
    RunBackup(backups::job::RunBackup) = "runBackup",
    SuspendSubscription(subscriptions::job::SuspendSubscription) = "suspendSubscription",
    UnsuspendSubscription(subscriptions::job::UnsuspendSubscription) = "unsuspendSubscription",
    TerminateSubscription(subscriptions::job::TerminateSubscription) = "terminateSubscription",
    ProvisionOrderCertificate(hosting::tls::ProvisionOrderCertificate) = "orderCertificate",
    IssueSiteCertificate(hosting::tls::IssueSiteCertificate) = "issueCertificate",
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::JobPayload;
    use crate::{
        model::{JobType, ProductType},
        orders::jobs::{OrderJob, OrderStep},
    };

    fn order() -> OrderJob {
        serde_json::from_value(json!({
            "orderId": Uuid::new_v4(), "subscriptionId": Uuid::new_v4(),
            "customerId": Uuid::new_v4(), "customerEmail": "ann@example.com",
            "domainId": Uuid::new_v4(), "domain": "example.com", "planId": Uuid::new_v4(),
            "planSlug": "basic", "productType": "SHARED_HOSTING", "limits": {"emails": 1},
        }))
        .unwrap()
    }

    #[test]
    fn an_order_steps_payload_has_the_steps_type_and_round_trips() {
        for step in [
            OrderStep::Zone,
            OrderStep::Site,
            OrderStep::Mailbox,
            OrderStep::Vps,
            OrderStep::Certificate,
        ] {
            let payload = step.payload(order());
            assert_eq!(payload.job_type(), step.job_type());
            let stored = payload.to_stored();
            assert_eq!(stored["kind"], payload.kind());
            let back = JobPayload::from_stored(step.job_type(), stored).unwrap();
            assert_eq!(back.kind(), payload.kind());
            assert_eq!(back.refs(), payload.refs());
            assert!(back.refs().domain_id.is_some() && back.refs().subscription_id.is_some());
        }
        assert_eq!(order().product_type, ProductType::SharedHosting);
    }

    #[test]
    fn a_payload_stored_under_another_type_is_refused() {
        let stored = OrderStep::Zone.payload(order()).to_stored();
        let err = JobPayload::from_stored(JobType::TerminateAccount, stored).unwrap_err();
        assert!(err.to_string().contains("orderZone"), "{err}");
        let err =
            JobPayload::from_stored(JobType::RunBackup, json!({"backupJobId": "x"})).unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
    }

    #[test]
    fn a_mailbox_and_a_site_suspension_share_a_type_but_not_a_kind() {
        let id = Uuid::new_v4();
        let mail = JobPayload::from_stored(
            JobType::SuspendAccount,
            json!({"kind": "disableMailbox", "mailAccountId": id, "email": "info@example.com",
                   "domainId": id, "requestedBy": id}),
        )
        .unwrap();
        let site = JobPayload::from_stored(
            JobType::SuspendAccount,
            json!({"kind": "suspendSite", "hostingAccountId": id, "domain": "example.com",
                   "domainId": id, "requestedBy": id}),
        )
        .unwrap();
        assert_eq!(mail.refs().mail_account_id, Some(id));
        let reset = JobPayload::from_stored(
            JobType::ProvisionMail,
            json!({"kind": "resetMailPassword", "mailAccountId": id, "email": "info@example.com",
                   "domainId": id, "requestedBy": id,
                   "passwordHash": "$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"}),
        )
        .unwrap();
        assert_eq!(reset.refs().mail_account_id, Some(id));
        assert_eq!(
            reset.to_stored()["mailAccountId"],
            json!(id),
            "flattened as before"
        );
        assert_eq!(site.refs().hosting_account_id, Some(id));
        assert_eq!(JobPayload::KINDS.len(), 20);
    }
}
