//! PROVISION_MAIL: the order's first mailbox (`info@<domain>`) on the tenant's MAIL server.
//!
//! The panel generates the password, sends the mail server only its argon2id hash
//! (m = 64 MiB, t = 3, p = 1, what Dovecot verifies), records the MailAccount, and hands the
//! password sealed to the notifications outbox, which puts it in the customer's welcome
//! e-mail once the whole order is provisioned. The clear password is never stored.
//!
//! A job run again after its mailbox is ACTIVE changes nothing: a new password would lock
//! the customer out of the one they were sent.

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use mpanel_protocol::{
    DomainName, EmailAddress,
    mail::{
        CreateMailbox, DeleteMailbox, PasswordHash, QuotaMb, SetMailboxEnabled, SetMailboxPassword,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::jobs::agent::{db_error, pick_server, run_on, set_job_server};
use crate::{
    app::AppState,
    jobs::{
        dispatcher::{DispatchError, JobToRun},
        payload::{JobRefs, SharedPayload, newtype_kind},
    },
    model::MailStatus,
    orders::jobs::order_kind,
};

/// The local part of the mailbox every mail-enabled order starts with.
pub const FIRST_MAILBOX: &str = "info";
/// Length of generated mailbox passwords (letters and digits: about 119 bits).
const PASSWORD_LEN: usize = 20;

fn permanent(message: impl Into<String>) -> DispatchError {
    DispatchError::Permanent(message.into())
}

order_kind!(
    /// PROVISION_MAIL for a paid order: the order's first mailbox, its password sealed for
    /// the welcome e-mail.
    ProvisionOrderMailbox as ProvisionMail,
    |state, job, order| {
        let (domain, domain_id) = order.domain()?;
        provision_first(state, job, domain, domain_id, order.order_id).await
    },
);

/// A mailbox with the hash of a password the API made or was given (the clear password
/// went back to the operator once).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MailboxPassword {
    #[serde(flatten)]
    pub mailbox: MailboxRef,
    pub password_hash: PasswordHash,
}

impl SharedPayload for MailboxPassword {
    fn refs(&self) -> JobRefs {
        self.mailbox.refs()
    }

    /// The hash is for the mail server only.
    fn public_view(&self) -> Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Public<'a> {
            #[serde(flatten)]
            mailbox: &'a MailboxRef,
            password_hash: &'static str,
        }
        serde_json::to_value(Public {
            mailbox: &self.mailbox,
            password_hash: "***",
        })
        .expect("job payloads always serialize")
    }
}

newtype_kind!(
    /// PROVISION_MAIL asked for by an operator (`POST /api/mail/accounts`).
    CreateMailAccount(MailboxPassword) as ProvisionMail, requires MailWrite,
    |state, job, request| provision_account(state, job, request, false).await,
);
newtype_kind!(
    /// PROVISION_MAIL for a new password (`POST /api/mail/accounts/{id}/reset-password`).
    ResetMailPassword(MailboxPassword) as ProvisionMail, requires MailManage,
    |state, job, request| provision_account(state, job, request, true).await,
);

/// The mailbox a disable or enable is about.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MailboxRef {
    pub mail_account_id: Uuid,
    pub email: EmailAddress,
    pub domain_id: Uuid,
    pub requested_by: Uuid,
}

impl SharedPayload for MailboxRef {
    fn refs(&self) -> JobRefs {
        JobRefs::default()
            .domain(self.domain_id)
            .mail_account(self.mail_account_id)
    }
}

newtype_kind!(
    /// SUSPEND_ACCOUNT of a mailbox: it refuses logins (mail is still delivered).
    DisableMailbox(MailboxRef) as SuspendAccount, requires MailManage,
    |state, job, mailbox| set_enabled(state, job, mailbox.mail_account_id, false).await,
);
newtype_kind!(
    /// UNSUSPEND_ACCOUNT of a mailbox: it accepts logins again.
    EnableMailbox(MailboxRef) as UnsuspendAccount, requires MailManage,
    |state, job, mailbox| set_enabled(state, job, mailbox.mail_account_id, true).await,
);

async fn provision_first(
    state: &AppState,
    job: &JobToRun,
    domain: &DomainName,
    domain_id: Uuid,
    order_id: Uuid,
) -> Result<Value, DispatchError> {
    let address = EmailAddress::parse(&format!("{FIRST_MAILBOX}@{domain}"))
        .map_err(|e| permanent(format!("the mailbox address: {e}")))?;

    // The row first: an address another tenant or domain holds stops here.
    let row: Option<(Uuid, Uuid, Uuid, MailStatus)> = sqlx::query_as(
        "WITH inserted AS (
            INSERT INTO mail_accounts (tenant_id, domain_id, email, status)
            VALUES ($1, $2, $3, 'PENDING')
            ON CONFLICT (email) DO NOTHING
            RETURNING id, tenant_id, domain_id, status)
         SELECT id, tenant_id, domain_id, status FROM inserted
         UNION ALL
         SELECT id, tenant_id, domain_id, status FROM mail_accounts WHERE email = $3
         LIMIT 1",
    )
    .bind(job.tenant_id)
    .bind(domain_id)
    .bind(address.as_str())
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?;
    let Some((account_id, tenant, owner_domain, status)) = row else {
        return Err(DispatchError::Retryable(
            "the mail account row could not be written".into(),
        ));
    };
    if tenant != job.tenant_id || owner_domain != domain_id {
        return Err(permanent(format!(
            "the address {address} belongs to another domain"
        )));
    }
    if status == MailStatus::Active {
        return Ok(
            json!({ "mailAccountId": account_id, "email": address, "alreadyProvisioned": true }),
        );
    }

    let server = mail_server(state, job).await?;
    let password = generate_password();
    let hash = hash_password(password.clone()).await?;
    let output = run_on(
        state,
        job,
        server,
        CreateMailbox {
            address: address.clone(),
            password_hash: hash,
            quota_mb: None,
        },
    )
    .await?;

    let mut tx = state.db.begin().await.map_err(db_error)?;
    sqlx::query("UPDATE mail_accounts SET status = 'ACTIVE', mailbox = $2 WHERE id = $1")
        .bind(account_id)
        .bind(&output.maildir)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    crate::notify::stash_credential(
        &mut tx,
        &state.sealer,
        job.tenant_id,
        order_id,
        "MAILBOX",
        address.as_str(),
        &password,
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(json!({
        "serverId": server,
        "mailAccountId": account_id,
        "email": address,
        "mailbox": output.maildir,
        "changed": output.changed,
    }))
}

/// A mailbox an operator asked for, or a password reset.
async fn provision_account(
    state: &AppState,
    job: &JobToRun,
    request: &MailboxPassword,
    reset: bool,
) -> Result<Value, DispatchError> {
    let account = load_account(state, job, request.mailbox.mail_account_id).await?;
    let hash = request.password_hash.clone();
    let server = mail_server(state, job).await?;
    if reset {
        let out = run_on(
            state,
            job,
            server,
            SetMailboxPassword {
                address: account.email.clone(),
                password_hash: hash,
            },
        )
        .await?;
        return Ok(json!({ "mailAccountId": account.id, "email": account.email,
                          "serverId": server, "changed": out.changed }));
    }
    let quota_mb = account
        .quota_mb
        .and_then(|q| u32::try_from(q).ok())
        .map(QuotaMb::new)
        .transpose()
        .map_err(|e| permanent(e.to_string()))?;
    let out = run_on(
        state,
        job,
        server,
        CreateMailbox {
            address: account.email.clone(),
            password_hash: hash,
            quota_mb,
        },
    )
    .await?;
    sqlx::query("UPDATE mail_accounts SET status = 'ACTIVE', mailbox = $2 WHERE id = $1")
        .bind(account.id)
        .bind(&out.maildir)
        .execute(&state.db)
        .await
        .map_err(db_error)?;
    Ok(
        json!({ "mailAccountId": account.id, "email": account.email, "serverId": server,
               "mailbox": out.maildir, "changed": out.changed }),
    )
}

struct MailAccountRef {
    id: Uuid,
    email: EmailAddress,
    quota_mb: Option<i32>,
}

async fn load_account(
    state: &AppState,
    job: &JobToRun,
    id: Uuid,
) -> Result<MailAccountRef, DispatchError> {
    let (email, quota_mb): (String, Option<i32>) = sqlx::query_as(
        "SELECT email, quota_mb FROM mail_accounts WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(job.tenant_id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?
    .ok_or_else(|| permanent("the mail account no longer exists"))?;
    let email = EmailAddress::parse(&email).map_err(|e| permanent(e.to_string()))?;
    Ok(MailAccountRef {
        id,
        email,
        quota_mb,
    })
}

/// SUSPEND_ACCOUNT / UNSUSPEND_ACCOUNT of a mail account: the mailbox refuses logins (mail
/// is still delivered) or accepts them again.
pub(crate) async fn set_enabled(
    state: &AppState,
    job: &JobToRun,
    id: Uuid,
    enabled: bool,
) -> Result<Value, DispatchError> {
    let account = load_account(state, job, id).await?;
    let server = mail_server(state, job).await?;
    let out = run_on(
        state,
        job,
        server,
        SetMailboxEnabled {
            address: account.email.clone(),
            enabled,
        },
    )
    .await?;
    let status = if enabled {
        MailStatus::Active
    } else {
        MailStatus::Disabled
    };
    sqlx::query("UPDATE mail_accounts SET status = $2 WHERE id = $1")
        .bind(account.id)
        .bind(status)
        .execute(&state.db)
        .await
        .map_err(db_error)?;
    Ok(
        json!({ "mailAccountId": account.id, "email": account.email, "serverId": server,
               "status": status, "changed": out.changed }),
    )
}

/// A terminated subscription's mailbox: logins refused first (so no session outlives the
/// decision), then removed from the mail server's maps and its row deleted. The maildir
/// stays on the server for the operator's archive.
pub(crate) async fn delete_account(
    state: &AppState,
    job: &JobToRun,
    id: Uuid,
) -> Result<Value, DispatchError> {
    let account = load_account(state, job, id).await?;
    let server = mail_server(state, job).await?;
    run_on(
        state,
        job,
        server,
        SetMailboxEnabled {
            address: account.email.clone(),
            enabled: false,
        },
    )
    .await?;
    let out = run_on(
        state,
        job,
        server,
        DeleteMailbox {
            address: account.email.clone(),
        },
    )
    .await?;
    sqlx::query("DELETE FROM mail_accounts WHERE id = $1")
        .bind(account.id)
        .execute(&state.db)
        .await
        .map_err(db_error)?;
    Ok(
        json!({ "mailAccountId": account.id, "email": account.email, "serverId": server,
               "deleted": out.deleted, "maildir": out.maildir }),
    )
}

/// The tenant's MAIL server, recorded on the job.
async fn mail_server(state: &AppState, job: &JobToRun) -> Result<Uuid, DispatchError> {
    let Some((server, _)) = pick_server(state, job.tenant_id, "MAIL").await? else {
        return Err(DispatchError::Retryable(
            "this tenant has no active MAIL server".into(),
        ));
    };
    set_job_server(state, job.id, server).await?;
    Ok(server)
}

/// A random password of letters and digits.
pub fn generate_password() -> Zeroizing<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; PASSWORD_LEN];
    rand::fill(&mut bytes[..]);
    // 256 is not a multiple of the alphabet's size: redraw the few biased bytes.
    let limit = 256 - 256 % ALPHABET.len();
    let mut out = Zeroizing::new(String::with_capacity(PASSWORD_LEN));
    for mut b in bytes {
        while usize::from(b) >= limit {
            let mut one = [0u8; 1];
            rand::fill(&mut one[..]);
            b = one[0];
        }
        out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
    }
    out
}

/// The argon2id hash the mail server stores (on a blocking thread: it takes ~100 ms).
pub async fn hash_password(password: Zeroizing<String>) -> Result<PasswordHash, DispatchError> {
    tokio::task::spawn_blocking(move || {
        let params = Params::new(65_536, 3, 1, None).expect("valid argon2 parameters");
        let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .map_err(|e| permanent(format!("hashing the mailbox password: {e}")))?
            .to_string();
        PasswordHash::parse(&phc).map_err(|e| permanent(e.to_string()))
    })
    .await
    .map_err(|e| permanent(format!("hashing the mailbox password: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_unambiguous() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert_ne!(*a, *b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(!a.contains(['0', 'O', 'l', '1', 'I']));
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_dovecots_parameters() {
        let hash = hash_password(Zeroizing::new("correct horse".into()))
            .await
            .unwrap();
        assert!(hash.as_phc().starts_with("$argon2id$v=19$m=65536,t=3,p=1$"));
    }
}
