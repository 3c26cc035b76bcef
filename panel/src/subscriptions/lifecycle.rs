//! What a billing event does to a subscription, decided without I/O so that every rule is a
//! unit test: payments renew it and lift a suspension for non-payment, a failed payment
//! makes it PAST_DUE with a suspension date, a cancellation ends it with a termination date.
//!
//! Stripe delivers events more than once and out of order. The newest event by its own time
//! wins: an event older than the newest one applied is stale and changes nothing, and an
//! event that finds the subscription already where it leads changes nothing either, so a
//! duplicate never sends a second e-mail or queues a second job. A terminated subscription
//! is final; a cancelled one comes back only through an operator's reactivation.

use chrono::{DateTime, Duration, Utc};

use crate::model::{ServiceState, SubscriptionStatus, SuspendReason};

/// A tenant's lifecycle policy (`subscription_policies`, defaults when it has no row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub grace_period: Duration,
    pub warning: Duration,
    pub retention: Duration,
    pub keep_zone_on_termination: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            grace_period: Duration::days(7),
            warning: Duration::days(2),
            retention: Duration::days(30),
            keep_zone_on_termination: false,
        }
    }
}

impl Policy {
    /// When a subscription unpaid since `since` is warned and suspended. No warning when the
    /// grace period is not longer than the warning: the payment-failed e-mail says it all.
    pub fn past_due_from(&self, since: DateTime<Utc>) -> PastDue {
        let suspend_after = since + self.grace_period;
        let warn_after = (self.warning > Duration::zero() && self.warning < self.grace_period)
            .then(|| suspend_after - self.warning);
        PastDue {
            since,
            warn_after,
            suspend_after,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PastDue {
    pub since: DateTime<Utc>,
    pub warn_after: Option<DateTime<Utc>>,
    pub suspend_after: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An invoice was paid; `period_end` is the end of the period it pays for, when known.
    Paid {
        period_end: Option<DateTime<Utc>>,
    },
    PaymentFailed,
    /// The billing side ended the subscription (Stripe's `customer.subscription.deleted`).
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingEvent {
    pub kind: EventKind,
    /// The event's own time (Stripe's `created`), not when it arrived.
    pub at: DateTime<Utc>,
}

/// The part of a subscription the rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub status: SubscriptionStatus,
    pub service: ServiceState,
    pub reason: Option<SuspendReason>,
    pub billing_event_at: Option<DateTime<Utc>>,
    pub current_period_end: DateTime<Utc>,
}

/// What an event changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Older than the newest event applied.
    Stale,
    /// Newer, but the subscription already is where it leads (only the event time moves on).
    Unchanged,
    Change(Change),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub status: Option<SubscriptionStatus>,
    /// `Some(None)` clears the unpaid state, `Some(Some(_))` starts it.
    pub past_due: Option<Option<PastDue>>,
    pub period_end: Option<DateTime<Utc>>,
    pub cancelled: Option<Cancellation>,
    /// A new state for the resources.
    pub service: Option<(ServiceState, Option<SuspendReason>)>,
    /// The customer is told their payment failed.
    pub payment_failed_notice: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancellation {
    pub at: DateTime<Utc>,
    pub terminate_after: DateTime<Utc>,
}

pub fn decide(current: &Current, event: &BillingEvent, policy: &Policy) -> Decision {
    if current
        .billing_event_at
        .is_some_and(|newest| event.at < newest)
    {
        return Decision::Stale;
    }
    if current.service == ServiceState::Terminated
        || current.status == SubscriptionStatus::Cancelled
    {
        return Decision::Unchanged;
    }
    let mut change = Change::default();
    match event.kind {
        EventKind::Paid { period_end } => {
            if current.status != SubscriptionStatus::Active {
                change.status = Some(SubscriptionStatus::Active);
                change.past_due = Some(None);
            }
            change.period_end = period_end.filter(|end| *end > current.current_period_end);
            if current.service == ServiceState::Suspended
                && current.reason == Some(SuspendReason::NonPayment)
            {
                change.service = Some((ServiceState::Active, None));
            }
        }
        EventKind::PaymentFailed => {
            if current.status != SubscriptionStatus::PastDue {
                change.status = Some(SubscriptionStatus::PastDue);
                change.past_due = Some(Some(policy.past_due_from(event.at)));
                change.payment_failed_notice = true;
            }
        }
        EventKind::Cancelled => {
            change.status = Some(SubscriptionStatus::Cancelled);
            change.cancelled = Some(cancellation(event.at, policy));
            change.service = Some((ServiceState::Suspended, Some(SuspendReason::Cancelled)));
        }
    }
    if change == Change::default() {
        Decision::Unchanged
    } else {
        Decision::Change(change)
    }
}

/// A cancellation at `at`: the resources are suspended now and terminated after retention.
pub fn cancellation(at: DateTime<Utc>, policy: &Policy) -> Cancellation {
    Cancellation {
        at,
        terminate_after: at + policy.retention,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn active() -> Current {
        Current {
            status: SubscriptionStatus::Active,
            service: ServiceState::Active,
            reason: None,
            billing_event_at: None,
            current_period_end: t(30 * 86_400),
        }
    }

    fn event(kind: EventKind, at: i64) -> BillingEvent {
        BillingEvent { kind, at: t(at) }
    }

    /// Applies a decision the way `billing::apply` writes it.
    fn apply(current: &mut Current, event: &BillingEvent) -> Decision {
        let decision = decide(current, event, &Policy::default());
        if decision != Decision::Stale {
            current.billing_event_at = Some(event.at);
        }
        if let Decision::Change(change) = &decision {
            if let Some(status) = change.status {
                current.status = status;
            }
            if let Some(end) = change.period_end {
                current.current_period_end = end;
            }
            if let Some((service, reason)) = change.service {
                current.service = service;
                current.reason = reason;
            }
        }
        decision
    }

    #[test]
    fn a_failed_payment_makes_it_past_due_with_dates_from_the_policy() {
        let Decision::Change(change) = decide(
            &active(),
            &event(EventKind::PaymentFailed, 10),
            &Policy::default(),
        ) else {
            panic!("expected a change");
        };
        assert_eq!(change.status, Some(SubscriptionStatus::PastDue));
        assert!(change.payment_failed_notice);
        let due = change.past_due.unwrap().unwrap();
        assert_eq!(due.since, t(10));
        assert_eq!(due.suspend_after, t(10) + Duration::days(7));
        assert_eq!(due.warn_after, Some(t(10) + Duration::days(5)));
        assert_eq!(
            change.service, None,
            "nothing is suspended before the grace period"
        );
    }

    #[test]
    fn no_warning_when_the_grace_period_is_shorter_than_it() {
        let policy = Policy {
            grace_period: Duration::hours(1),
            ..Policy::default()
        };
        assert_eq!(policy.past_due_from(t(0)).warn_after, None);
    }

    #[test]
    fn a_payment_lifts_a_suspension_for_non_payment_and_renews_the_period() {
        let mut current = active();
        current.status = SubscriptionStatus::PastDue;
        current.service = ServiceState::Suspended;
        current.reason = Some(SuspendReason::NonPayment);
        let end = t(60 * 86_400);
        let Decision::Change(change) = decide(
            &current,
            &event(
                EventKind::Paid {
                    period_end: Some(end),
                },
                20,
            ),
            &Policy::default(),
        ) else {
            panic!("expected a change");
        };
        assert_eq!(change.status, Some(SubscriptionStatus::Active));
        assert_eq!(change.past_due, Some(None));
        assert_eq!(change.period_end, Some(end));
        assert_eq!(change.service, Some((ServiceState::Active, None)));
    }

    #[test]
    fn a_payment_does_not_lift_an_operators_suspension() {
        let mut current = active();
        current.service = ServiceState::Suspended;
        current.reason = Some(SuspendReason::Operator);
        assert_eq!(
            decide(
                &current,
                &event(EventKind::Paid { period_end: None }, 5),
                &Policy::default()
            ),
            Decision::Unchanged
        );
    }

    #[test]
    fn a_cancellation_suspends_and_dates_the_termination() {
        let Decision::Change(change) = decide(
            &active(),
            &event(EventKind::Cancelled, 100),
            &Policy::default(),
        ) else {
            panic!("expected a change");
        };
        assert_eq!(change.status, Some(SubscriptionStatus::Cancelled));
        assert_eq!(
            change.service,
            Some((ServiceState::Suspended, Some(SuspendReason::Cancelled)))
        );
        assert_eq!(
            change.cancelled.unwrap().terminate_after,
            t(100) + Duration::days(30)
        );
    }

    #[test]
    fn duplicates_change_nothing_the_second_time() {
        for kind in [
            EventKind::PaymentFailed,
            EventKind::Paid {
                period_end: Some(t(90 * 86_400)),
            },
            EventKind::Cancelled,
        ] {
            let mut current = active();
            if kind == EventKind::PaymentFailed || kind == EventKind::Cancelled {
                assert!(matches!(
                    apply(&mut current, &event(kind, 10)),
                    Decision::Change(_)
                ));
            } else {
                apply(&mut current, &event(kind, 10));
            }
            assert_eq!(
                apply(&mut current, &event(kind, 10)),
                Decision::Unchanged,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn the_newest_event_wins_whatever_the_order_of_arrival() {
        let failed = event(EventKind::PaymentFailed, 10);
        let paid = event(EventKind::Paid { period_end: None }, 20);
        let cancelled = event(EventKind::Cancelled, 30);
        let orders = [
            [failed, paid, cancelled],
            [failed, cancelled, paid],
            [paid, failed, cancelled],
            [paid, cancelled, failed],
            [cancelled, failed, paid],
            [cancelled, paid, failed],
        ];
        for order in orders {
            let mut current = active();
            for e in &order {
                apply(&mut current, e);
            }
            assert_eq!(current.status, SubscriptionStatus::Cancelled, "{order:?}");
            assert_eq!(current.service, ServiceState::Suspended, "{order:?}");
        }
        for order in [[failed, paid], [paid, failed]] {
            let mut current = active();
            for e in &order {
                apply(&mut current, e);
            }
            assert_eq!(current.status, SubscriptionStatus::Active, "{order:?}");
        }
    }

    #[test]
    fn a_terminated_or_cancelled_subscription_takes_no_more_billing_events() {
        let mut current = active();
        current.status = SubscriptionStatus::Cancelled;
        current.service = ServiceState::Terminated;
        for kind in [
            EventKind::PaymentFailed,
            EventKind::Paid { period_end: None },
            EventKind::Cancelled,
        ] {
            assert_eq!(
                decide(&current, &event(kind, 50), &Policy::default()),
                Decision::Unchanged
            );
        }
    }
}
