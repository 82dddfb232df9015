//! Passkeys: users sign in with a WebAuthn credential instead of a password.
//!
//! What this module owns: the `passkeys` table (schema/0070_passkeys.sql), the ceremony
//! challenges, the two ceremonies as the authorization server runs them — a signed-in
//! user registering a passkey, and anyone signing in with one — and the one-time sign-in
//! links (`warden user passkey-link`) with which a user without a password adds a first
//! one. The cryptographic checks are `webauthn.rs`; the pages and forms are
//! `http/oauth.rs` (the OAuth login page) and `http/account.rs` (the account page).
//!
//! - **Challenges are sealed, not stored.** A ceremony's challenge is the purpose, the
//!   user (for a registration), the form's CSRF token and an expiry, sealed under the
//!   master key (its random nonce makes every challenge unpredictable). Showing a sign-in
//!   page writes nothing; a challenge is checked by opening it. Once a ceremony succeeds
//!   its challenge's hash goes into `webauthn_used_challenges` in the same transaction
//!   as the ceremony's effect, so each is good once, on any replica.
//! - **Discoverable credentials, no username.** Sign-in asks the browser for any passkey
//!   of this relying party; the credential id names the passkey and through it the user.
//!   The user handle (the identity's UUID) is required and must be the passkey's owner.
//! - **Copies.** A signature counter that does not advance (when the authenticator keeps
//!   one), or a backup eligibility other than the registration's, refuses the sign-in as
//!   a possibly copied passkey. The passkey's row is locked from its lookup to the
//!   counter's update.
//! - **Bounds.** Adding a passkey needs a recent sign-in (`http/account.rs`); a user holds
//!   at most [`MAX_PASSKEYS_PER_USER`]; a posted answer is at most
//!   [`MAX_CREDENTIAL_BYTES`].
//! - **Audit.** `auth.login` (method `passkey`, `password+passkey` for the confirmation
//!   of a password sign-in — on the trail of the user who gave the password — or `link`)
//!   for every sign-in and refusal,
//!   `auth.passkey_registered` and `auth.passkey_removed` for changes made through the
//!   pages; the CLI's removals are announced on `warden_identity` like its other changes.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;
use uuid::Uuid;
use warden_actors::audit::AuditEvent;

use super::service::Identity;
use super::store::{self, IdentityRow, StoreError};
use super::tokens::unix_now;
use super::webauthn::{self, RelyingParty, WebAuthnError};
use crate::config::PasskeyConfig;
use crate::secrets::MasterKey;

/// How long a ceremony may take, from the page that starts it to the form it posts.
pub const CEREMONY_TTL: Duration = Duration::from_secs(600);
/// The longest label a user may give a passkey.
pub const MAX_LABEL_CHARS: usize = 64;
/// The longest credential (the JSON the page posts) read.
pub const MAX_CREDENTIAL_BYTES: usize = 64 * 1024;
/// The most passkeys one user may register (a bound on what one account can store).
pub const MAX_PASSKEYS_PER_USER: i64 = 20;

const CHALLENGE_CONTEXT: &[u8] = b"webauthn-challenge";
const LINK_CONTEXT: &[u8] = b"passkey-sign-in-link";
/// The longest a sign-in link may stay good.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(7 * 86400);

/// What a one-time sign-in link carries, sealed.
#[derive(Serialize, Deserialize)]
struct SignInLink {
    user: Uuid,
    exp: u64,
    /// The user's session epoch when the link was made: signing them out everywhere
    /// cancels it.
    #[serde(default)]
    epoch: i64,
}

/// What a ceremony is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Register,
    SignIn,
    /// A passkey confirming the password sign-in of the identity the challenge names
    /// (`identity.passkeys.second_factor`).
    Confirm,
}

/// What a challenge carries, sealed.
#[derive(Serialize, Deserialize)]
struct Ceremony {
    purpose: Purpose,
    /// The identity registering, or whose password sign-in a passkey confirms; `None`
    /// for a sign-in.
    user: Option<Uuid>,
    /// The CSRF token of the form the ceremony's answer is posted with.
    csrf: String,
    exp: u64,
}

/// A credential as the page posts it: the shape of WebAuthn's
/// `PublicKeyCredential.toJSON()`, binary fields base64url.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialJson {
    raw_id: String,
    #[serde(rename = "type")]
    kind: String,
    response: ResponseJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseJson {
    #[serde(rename = "clientDataJSON")]
    client_data_json: String,
    attestation_object: Option<String>,
    authenticator_data: Option<String>,
    signature: Option<String>,
    user_handle: Option<String>,
}

/// One stored passkey, as listings show it.
#[derive(Clone, Debug)]
pub struct PasskeyInfo {
    /// The credential id, base64url: how the pages and the CLI name a passkey.
    pub id: String,
    pub user: String,
    pub label: String,
    pub algorithm: i32,
    pub backed_up: bool,
    pub created_at: SystemTime,
    pub last_used_at: Option<SystemTime>,
}

/// Why a ceremony was refused. The messages are for the person at the browser.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error("passkeys are turned off on this Warden")]
    Disabled,
    #[error("the passkey answer is malformed: {0}")]
    Malformed(String),
    #[error("the passkey answer is not valid here: {0}")]
    Invalid(#[from] WebAuthnError),
    #[error("this passkey page expired or was not opened in this browser; start again")]
    WrongCeremony,
    #[error("this passkey answer was already used; start again")]
    Replayed,
    #[error("this passkey is not registered here (it may have been removed)")]
    Unknown,
    #[error("this passkey is already registered")]
    Duplicate,
    /// The authenticator answered unlike the one registered (the reason says how).
    #[error("{0}: the passkey may have been copied")]
    Cloned(&'static str),
    #[error("this passkey answer names another user than the passkey's")]
    WrongUser,
    #[error("this passkey belongs to another account than the one signing in")]
    NotTheirs,
    #[error("this sign-in link is not valid or has expired; ask for a new one")]
    BadLink,
    #[error("this sign-in link was already used; ask for a new one")]
    LinkUsed,
    #[error(
        "this sign-in link was cancelled when you were signed out everywhere; ask for a new one"
    )]
    LinkCancelled,
    #[error("this account cannot sign in")]
    AccountDisabled,
    #[error("a passkey label is 1 to {MAX_LABEL_CHARS} characters without control characters")]
    BadLabel,
    #[error("you have {MAX_PASSKEYS_PER_USER} passkeys already; remove one first")]
    TooMany,
    /// The database failed; the detail is for the log and the audit row, not the page.
    #[error("sign-in is unavailable right now: {0}")]
    Unavailable(String),
}

impl PasskeyError {
    /// Logs a database failure's detail (which the page does not show).
    pub fn log_detail(&self) {
        if let PasskeyError::Unavailable(detail) = self {
            tracing::warn!(error = %detail, "a passkey ceremony failed on the database");
        }
    }

    /// What the person at the browser is told: everything but a database failure's
    /// detail.
    pub fn for_user(&self) -> String {
        match self {
            PasskeyError::Unavailable(_) => {
                "Passkeys are unavailable right now; try again shortly.".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for PasskeyError {
    fn from(error: StoreError) -> Self {
        PasskeyError::Unavailable(error.to_string())
    }
}

impl From<tokio_postgres::Error> for PasskeyError {
    fn from(error: tokio_postgres::Error) -> Self {
        PasskeyError::Unavailable(error.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for PasskeyError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        PasskeyError::Unavailable(error.to_string())
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(field: &str, text: &str) -> Result<Vec<u8>, PasskeyError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| PasskeyError::Malformed(format!("`{field}` is not base64url")))
}

fn relying_party(config: &PasskeyConfig) -> Result<RelyingParty, PasskeyError> {
    if !config.enabled {
        return Err(PasskeyError::Disabled);
    }
    Ok(RelyingParty {
        id: config.rp_id.clone(),
        origin: config.origin.clone(),
        require_user_verification: config.user_verification_required,
    })
}

/// Parses the posted credential (bounded in size).
pub fn parse_credential(text: &str) -> Result<CredentialJson, PasskeyError> {
    if text.len() > MAX_CREDENTIAL_BYTES {
        return Err(PasskeyError::Malformed(format!(
            "it is over {MAX_CREDENTIAL_BYTES} bytes"
        )));
    }
    let credential: CredentialJson =
        serde_json::from_str(text).map_err(|e| PasskeyError::Malformed(e.to_string()))?;
    if credential.kind != "public-key" {
        return Err(PasskeyError::Malformed("`type` is not `public-key`".into()));
    }
    Ok(credential)
}

/// A label the user may give: trimmed, 1 to [`MAX_LABEL_CHARS`] characters, no control
/// characters.
pub fn check_label(label: &str) -> Result<&str, PasskeyError> {
    let label = label.trim();
    let chars = label.chars().count();
    if chars == 0 || chars > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
        return Err(PasskeyError::BadLabel);
    }
    Ok(label)
}

impl Identity {
    /// A fresh challenge (base64url, as pages hand it to the browser) for a ceremony
    /// whose answer comes back with the form CSRF token `csrf`; `None` when passkeys are
    /// off.
    pub fn passkey_challenge(
        &self,
        purpose: Purpose,
        user: Option<Uuid>,
        csrf: &str,
    ) -> Option<String> {
        self.passkeys().enabled.then(|| {
            b64(&seal_ceremony(
                &self.master,
                purpose,
                user,
                csrf,
                unix_now(),
            ))
        })
    }

    /// Registers the passkey `credential` (the answer to a [`Purpose::Register`]
    /// challenge) for `user`, labelled `label`.
    pub async fn register_passkey(
        &self,
        user: &IdentityRow,
        csrf: &str,
        label: &str,
        credential: &str,
    ) -> Result<PasskeyInfo, PasskeyError> {
        let outcome = self.try_register(user, csrf, label, credential).await;
        let mut event = AuditEvent::new("auth.passkey_registered", "user");
        event.actor_id = Some(user.name.clone());
        event.decision = Some(if outcome.is_ok() { "allow" } else { "deny" });
        match &outcome {
            Ok((info, aaguid, backup_eligible)) => {
                event.subject = Some(info.id.clone());
                event.attributes = json!({
                    "label": info.label,
                    "algorithm": info.algorithm,
                    "aaguid": aaguid.to_string(),
                    "backup_eligible": backup_eligible,
                });
            }
            Err(error) => event.reason = Some(error.to_string()),
        }
        self.record(event).await;
        outcome.map(|(info, ..)| info)
    }

    async fn try_register(
        &self,
        user: &IdentityRow,
        csrf: &str,
        label: &str,
        credential: &str,
    ) -> Result<(PasskeyInfo, Uuid, bool), PasskeyError> {
        let rp = relying_party(&self.passkeys())?;
        let label = check_label(label)?;
        let credential = parse_credential(credential)?;
        let client_data = unb64("clientDataJSON", &credential.response.client_data_json)?;
        let attestation = credential
            .response
            .attestation_object
            .as_deref()
            .ok_or_else(|| PasskeyError::Malformed("`attestationObject` is missing".into()))?;
        let attestation = unb64("attestationObject", attestation)?;
        let (challenge, expires) = open_ceremony(
            &self.master,
            &client_data,
            (Purpose::Register, Some(user.id), csrf),
            unix_now(),
        )?;
        let created = rp.verify_registration(&challenge, &client_data, &attestation)?;
        if created.id != unb64("rawId", &credential.raw_id)? {
            return Err(PasskeyError::Malformed(
                "`rawId` is not the credential id the authenticator attested".into(),
            ));
        }
        let aaguid = Uuid::from_bytes(created.aaguid);
        // COSE identifiers Warden accepts are small negative numbers (webauthn::ALGORITHMS).
        let algorithm = i32::try_from(created.algorithm).unwrap_or(0);
        let mut client = self.db.get().await?;
        let transaction = client.transaction().await?;
        consume_challenge(&*transaction, &challenge, expires).await?;
        // Under the identity's row lock, so two registrations cannot both pass the bound.
        let held: i64 = transaction
            .query_one(
                "SELECT count(*) FROM passkeys
                 WHERE identity_id = (SELECT id FROM identities WHERE id = $1 FOR UPDATE)",
                &[&user.id],
            )
            .await?
            .get(0);
        if held >= MAX_PASSKEYS_PER_USER {
            return Err(PasskeyError::TooMany);
        }
        let inserted = transaction
            .execute(
                "INSERT INTO passkeys (credential_id, identity_id, label, public_key, algorithm,
                     sign_count, aaguid, backup_eligible, backed_up)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (credential_id) DO NOTHING",
                &[
                    &created.id,
                    &user.id,
                    &label,
                    &created.public_key,
                    &algorithm,
                    &i64::from(created.sign_count),
                    &aaguid,
                    &created.backup_eligible,
                    &created.backed_up,
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(PasskeyError::Duplicate);
        }
        transaction.commit().await?;
        let info = PasskeyInfo {
            id: b64(&created.id),
            user: user.name.clone(),
            label: label.to_owned(),
            algorithm,
            backed_up: created.backed_up,
            created_at: SystemTime::now(),
            last_used_at: None,
        };
        Ok((info, aaguid, created.backup_eligible))
    }

    /// Signs in with the passkey `credential` — the answer to a [`Purpose::SignIn`]
    /// challenge, or to a [`Purpose::Confirm`] one after a password — on behalf of OAuth
    /// client `client_id` (`warden:account` for the account page).
    pub async fn passkey_login(
        &self,
        csrf: &str,
        credential: &str,
        client_id: &str,
    ) -> Result<IdentityRow, PasskeyError> {
        let mut who = String::new();
        let mut method = "passkey";
        let outcome = self
            .try_login(csrf, credential, &mut who, &mut method)
            .await;
        let reason = match &outcome {
            Ok(_) => method.to_owned(),
            Err(error) => error.to_string(),
        };
        self.login_event(&who, client_id, outcome.is_ok(), &reason, method)
            .await;
        outcome
    }

    /// A challenge confirming `user`'s password sign-in with one of their passkeys, and
    /// the ids (base64url) of those passkeys for the browser to offer; `None` when they
    /// have none (or passkeys are off).
    pub(super) async fn confirm_challenge(
        &self,
        user: &IdentityRow,
        csrf: &str,
    ) -> Result<Option<(String, Vec<String>)>, PasskeyError> {
        let Some(challenge) = self.passkey_challenge(Purpose::Confirm, Some(user.id), csrf) else {
            return Ok(None);
        };
        let ids: Vec<String> = self
            .passkeys_of(user)
            .await?
            .into_iter()
            .map(|key| key.id)
            .collect();
        Ok((!ids.is_empty()).then_some((challenge, ids)))
    }

    async fn try_login(
        &self,
        csrf: &str,
        credential: &str,
        who: &mut String,
        method: &mut &'static str,
    ) -> Result<IdentityRow, PasskeyError> {
        let rp = relying_party(&self.passkeys())?;
        let credential = parse_credential(credential)?;
        let response = &credential.response;
        let missing = |field: &str| PasskeyError::Malformed(format!("`{field}` is missing"));
        let client_data = unb64("clientDataJSON", &response.client_data_json)?;
        // Whose sign-in this is, as far as the challenge says, before anything can fail:
        // a refused confirmation belongs on the trail of the user who gave the password.
        let (challenge, ceremony) = open_any(&self.master, &client_data)?;
        let mut client = self.db.get().await?;
        if let (Purpose::Confirm, Some(id)) = (ceremony.purpose, ceremony.user) {
            *method = "password+passkey";
            if let Some(row) = store::find_by_id(&**client, id).await? {
                who.clone_from(&row.name);
            }
        }
        let authenticator_data = unb64(
            "authenticatorData",
            response
                .authenticator_data
                .as_deref()
                .ok_or_else(|| missing("authenticatorData"))?,
        )?;
        let signature = unb64(
            "signature",
            response
                .signature
                .as_deref()
                .ok_or_else(|| missing("signature"))?,
        )?;
        let credential_id = unb64("rawId", &credential.raw_id)?;
        // A discoverable credential's answer names its user (§7.2): required, and it
        // must be the passkey's owner.
        let user_handle = match response.user_handle.as_deref() {
            Some(handle) if !handle.is_empty() => unb64("userHandle", handle)?,
            _ => return Err(missing("userHandle")),
        };
        let (expires, confirming) = sign_in_ceremony(&ceremony, csrf, unix_now())?;

        let transaction = client.transaction().await?;
        // Locked until the counter is written back: two answers of one authenticator
        // checked at once are checked one after the other.
        let Some(stored) = transaction
            .query_opt(
                "SELECT public_key, sign_count, identity_id, backup_eligible FROM passkeys
                 WHERE credential_id = $1 FOR UPDATE",
                &[&credential_id],
            )
            .await?
        else {
            return Err(PasskeyError::Unknown);
        };
        let public_key: Vec<u8> = stored.get(0);
        let stored_count: i64 = stored.get(1);
        let identity_id: Uuid = stored.get(2);
        let backup_eligible: bool = stored.get(3);
        let Some(user) = store::find_by_id(&*transaction, identity_id).await? else {
            return Err(PasskeyError::Unknown);
        };
        if confirming.is_none() {
            who.clone_from(&user.name);
        }
        if user_handle != identity_id.as_bytes() {
            return Err(PasskeyError::WrongUser);
        }
        let asserted = rp.verify_assertion(
            &challenge,
            &public_key,
            &client_data,
            &authenticator_data,
            &signature,
        )?;
        // After the signature: only a real answer of another account's passkey gets here.
        if confirming.is_some_and(|confirmed| confirmed != identity_id) {
            return Err(PasskeyError::NotTheirs);
        }
        if asserted.backup_eligible != backup_eligible {
            // Fixed for a credential's life: another authenticator answers in its name.
            return Err(PasskeyError::Cloned(
                "its backup eligibility differs from the registration's",
            ));
        }
        if !user.can_sign_in() {
            return Err(PasskeyError::AccountDisabled);
        }
        // A replayed answer repeats its counter too: named for what it is, first.
        consume_challenge(&*transaction, &challenge, expires).await?;
        let stored_count = u32::try_from(stored_count).unwrap_or(u32::MAX);
        if !webauthn::counter_advanced(stored_count, asserted.sign_count) {
            return Err(PasskeyError::Cloned(
                "its signature counter did not advance",
            ));
        }
        transaction
            .execute(
                "UPDATE passkeys SET sign_count = $2, backed_up = $3, last_used_at = now()
                 WHERE credential_id = $1",
                &[
                    &credential_id,
                    &i64::from(asserted.sign_count),
                    &asserted.backed_up,
                ],
            )
            .await?;
        store::touch_login(&*transaction, user.id).await?;
        transaction.commit().await?;
        Ok(user)
    }

    /// Signs in with a one-time link from `warden user passkey-link` (so that a user
    /// without a password can add their first passkey).
    pub async fn link_login(&self, code: &str) -> Result<IdentityRow, PasskeyError> {
        let mut who = String::new();
        let outcome = self.try_link_login(code, &mut who).await;
        let reason = match &outcome {
            Ok(_) => "sign-in link".to_owned(),
            Err(error) => error.to_string(),
        };
        self.login_event(&who, "warden:account", outcome.is_ok(), &reason, "link")
            .await;
        outcome
    }

    async fn try_link_login(
        &self,
        code: &str,
        who: &mut String,
    ) -> Result<IdentityRow, PasskeyError> {
        relying_party(&self.passkeys())?;
        let sealed = unb64("code", code.trim()).map_err(|_| PasskeyError::BadLink)?;
        let link: SignInLink = self
            .master
            .open_json(&sealed, LINK_CONTEXT)
            .ok_or(PasskeyError::BadLink)?;
        if link.exp <= unix_now() {
            return Err(PasskeyError::BadLink);
        }
        let mut client = self.db.get().await?;
        let transaction = client.transaction().await?;
        let Some(user) = store::find_by_id(&*transaction, link.user).await? else {
            return Err(PasskeyError::BadLink);
        };
        who.clone_from(&user.name);
        if !user.can_sign_in() {
            return Err(PasskeyError::AccountDisabled);
        }
        if user.session_epoch != link.epoch {
            return Err(PasskeyError::LinkCancelled);
        }
        match consume_challenge(&*transaction, &sealed, link.exp).await {
            Err(PasskeyError::Replayed) => return Err(PasskeyError::LinkUsed),
            other => other?,
        }
        store::touch_login(&*transaction, user.id).await?;
        transaction.commit().await?;
        Ok(user)
    }

    /// The passkeys of `user`, newest first.
    pub async fn passkeys_of(&self, user: &IdentityRow) -> Result<Vec<PasskeyInfo>, PasskeyError> {
        let client = self.db.get().await?;
        Ok(list(&**client, Some(&user.name)).await?)
    }

    /// Removes `user`'s passkey `id` (base64url); false when they have none by that id.
    pub async fn remove_passkey(&self, user: &IdentityRow, id: &str) -> Result<bool, PasskeyError> {
        let outcome = async {
            let credential_id = unb64("id", id)?;
            let client = self.db.get().await?;
            let removed = client
                .execute(
                    "DELETE FROM passkeys WHERE credential_id = $1 AND identity_id = $2",
                    &[&credential_id, &user.id],
                )
                .await?;
            Ok::<bool, PasskeyError>(removed > 0)
        }
        .await;
        let mut event = AuditEvent::new("auth.passkey_removed", "user");
        event.actor_id = Some(user.name.clone());
        event.subject = Some(id.chars().take(1400).collect());
        event.decision = Some(if matches!(outcome, Ok(true)) {
            "allow"
        } else {
            "deny"
        });
        event.reason = match &outcome {
            Ok(true) => None,
            Ok(false) => Some("the user has no passkey by that id".into()),
            Err(error) => Some(error.to_string()),
        };
        event.attributes = json!({"origin": "account page"});
        self.record(event).await;
        outcome
    }
}

/// Marks `challenge` used until `expires` (Unix seconds, when the challenge itself stops
/// opening: by the clock of the replica that sealed it), and forgets used ones that
/// expired; `Replayed` when it was used.
async fn consume_challenge<C: GenericClient>(
    client: &C,
    challenge: &[u8],
    expires: u64,
) -> Result<(), PasskeyError> {
    client
        .execute(
            "DELETE FROM webauthn_used_challenges WHERE expires_at < now()",
            &[],
        )
        .await?;
    let hash = Sha256::digest(challenge).to_vec();
    let fresh = client
        .execute(
            "INSERT INTO webauthn_used_challenges (challenge_sha256, expires_at)
             VALUES ($1, to_timestamp($2) + interval '1 minute')
             ON CONFLICT DO NOTHING",
            // A minute more: replicas' clocks may disagree a little.
            &[&hash, &(expires as f64)],
        )
        .await?;
    if fresh == 0 {
        return Err(PasskeyError::Replayed);
    }
    Ok(())
}

/// A sealed challenge: `purpose`, `user`, the form's `csrf` token and an expiry
/// [`CEREMONY_TTL`] after `now` (Unix seconds). The seal's random nonce makes each one
/// unpredictable.
fn seal_ceremony(
    master: &MasterKey,
    purpose: Purpose,
    user: Option<Uuid>,
    csrf: &str,
    now: u64,
) -> Vec<u8> {
    let ceremony = Ceremony {
        purpose,
        user,
        csrf: csrf.to_owned(),
        exp: now + CEREMONY_TTL.as_secs(),
    };
    master.seal_json(&ceremony, CHALLENGE_CONTEXT)
}

/// The challenge `client_data_json` answers and when it expires, if it is one Warden
/// sealed for `expected` (purpose, user, the posted form's CSRF token) and not expired
/// at `now`.
fn open_ceremony(
    master: &MasterKey,
    client_data_json: &[u8],
    expected: (Purpose, Option<Uuid>, &str),
    now: u64,
) -> Result<(Vec<u8>, u64), PasskeyError> {
    let (purpose, user, csrf) = expected;
    let (challenge, ceremony) = open_any(master, client_data_json)?;
    if ceremony.purpose == purpose && ceremony.user == user && ceremony.current(csrf, now) {
        Ok((challenge, ceremony.exp))
    } else {
        Err(PasskeyError::WrongCeremony)
    }
}

/// When a sign-in answer's challenge expires and — for the confirmation of a password
/// sign-in — whose sign-in it confirms, if it is a [`Purpose::SignIn`] challenge (`None`)
/// or a [`Purpose::Confirm`] one, for the posted form and not expired at `now`.
fn sign_in_ceremony(
    ceremony: &Ceremony,
    csrf: &str,
    now: u64,
) -> Result<(u64, Option<Uuid>), PasskeyError> {
    let sign_in = matches!(
        (ceremony.purpose, ceremony.user),
        (Purpose::SignIn, None) | (Purpose::Confirm, Some(_))
    );
    if sign_in && ceremony.current(csrf, now) {
        Ok((ceremony.exp, ceremony.user))
    } else {
        Err(PasskeyError::WrongCeremony)
    }
}

/// The challenge of `client_data_json` and what Warden sealed in it.
fn open_any(
    master: &MasterKey,
    client_data_json: &[u8],
) -> Result<(Vec<u8>, Ceremony), PasskeyError> {
    let challenge = webauthn::client_data_challenge(client_data_json)?;
    let ceremony = master
        .open_json(&challenge, CHALLENGE_CONTEXT)
        .ok_or(PasskeyError::WrongCeremony)?;
    Ok((challenge, ceremony))
}

impl Ceremony {
    /// Sealed for the form posted with `csrf`, and not expired at `now`.
    fn current(&self, csrf: &str, now: u64) -> bool {
        !csrf.is_empty()
            && super::secret::equal(self.csrf.as_bytes(), csrf.as_bytes())
            && self.exp > now
    }
}

/// The code of a one-time sign-in link for `user`, good until `exp` (Unix seconds) or
/// until the user is signed out everywhere.
pub fn sign_in_link_code(master: &MasterKey, user: &IdentityRow, exp: u64) -> String {
    let link = SignInLink {
        user: user.id,
        exp,
        epoch: user.session_epoch,
    };
    b64(&master.seal_json(&link, LINK_CONTEXT))
}

/// Stored passkeys, of one user or of all, newest first.
pub async fn list<C: GenericClient>(
    client: &C,
    user: Option<&str>,
) -> Result<Vec<PasskeyInfo>, StoreError> {
    let rows = client
        .query(
            "SELECT p.credential_id, i.name, p.label, p.algorithm, p.backed_up, p.created_at,
                    p.last_used_at
             FROM passkeys p JOIN identities i ON i.id = p.identity_id
             WHERE $1::text IS NULL OR i.name = $1
             ORDER BY p.created_at DESC, p.credential_id",
            &[&user],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| PasskeyInfo {
            id: b64(&row.get::<_, Vec<u8>>(0)),
            user: row.get(1),
            label: row.get(2),
            algorithm: row.get(3),
            backed_up: row.get(4),
            created_at: row.get(5),
            last_used_at: row.get(6),
        })
        .collect())
}

/// Removes passkey `id` (base64url) whoever owns it; the owner's name, or `None`.
pub async fn remove<C: GenericClient>(client: &C, id: &str) -> Result<Option<String>, StoreError> {
    let Ok(credential_id) = unb64("id", id) else {
        return Ok(None);
    };
    Ok(client
        .query_opt(
            "DELETE FROM passkeys p USING identities i
             WHERE p.credential_id = $1 AND i.id = p.identity_id
             RETURNING i.name",
            &[&credential_id],
        )
        .await?
        .map(|row| row.get(0)))
}

/// The user handle a registration gives the authenticator: the identity's UUID, which
/// names no one outside Warden.
pub fn user_handle(user: &IdentityRow) -> String {
    b64(user.id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_data(challenge: &[u8]) -> Vec<u8> {
        json!({"type": "webauthn.get", "challenge": b64(challenge), "origin": "https://x"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_sign_in_answers_a_sign_in_or_a_confirmation_challenge_only() {
        let master = MasterKey::from_bytes([7; 32], "test");
        let alice = Uuid::from_u128(1);
        let now = 1_800_000_000;
        let opened = |purpose: Purpose, user: Option<Uuid>, csrf: &str, at: u64| {
            let sealed = seal_ceremony(&master, purpose, user, "csrf-a", now);
            let (_, ceremony) = open_any(&master, &client_data(&sealed)).expect("ours");
            sign_in_ceremony(&ceremony, csrf, at).map(|(_, confirming)| confirming)
        };
        assert_eq!(
            opened(Purpose::SignIn, None, "csrf-a", now + 1).ok(),
            Some(None)
        );
        assert_eq!(
            opened(Purpose::Confirm, Some(alice), "csrf-a", now + 1).ok(),
            Some(Some(alice))
        );
        for (purpose, user) in [
            (Purpose::Register, Some(alice)),
            (Purpose::SignIn, Some(alice)),
            (Purpose::Confirm, None),
        ] {
            assert!(
                matches!(
                    opened(purpose, user, "csrf-a", now + 1),
                    Err(PasskeyError::WrongCeremony)
                ),
                "{purpose:?} {user:?}"
            );
        }
        // Another form's, or too late.
        assert!(opened(Purpose::Confirm, Some(alice), "csrf-b", now + 1).is_err());
        assert!(opened(Purpose::Confirm, Some(alice), "", now + 1).is_err());
        let late = now + CEREMONY_TTL.as_secs();
        assert!(opened(Purpose::Confirm, Some(alice), "csrf-a", late).is_err());
    }

    #[test]
    fn a_challenge_opens_only_for_its_own_ceremony() {
        let master = MasterKey::from_bytes([7; 32], "test");
        let alice = Uuid::from_u128(1);
        let bob = Uuid::from_u128(2);
        let now = 1_800_000_000;
        let registration = seal_ceremony(&master, Purpose::Register, Some(alice), "csrf-a", now);
        let answered = client_data(&registration);
        let (challenge, expires) = open_ceremony(
            &master,
            &answered,
            (Purpose::Register, Some(alice), "csrf-a"),
            now + 1,
        )
        .expect("its own ceremony");
        assert_eq!(challenge, registration);
        assert_eq!(expires, now + CEREMONY_TTL.as_secs());
        let refused = |expected: (Purpose, Option<Uuid>, &str), at: u64| {
            matches!(
                open_ceremony(&master, &answered, expected, at),
                Err(PasskeyError::WrongCeremony)
            )
        };
        // A sign-in, another user, another form, no form, too late.
        assert!(refused((Purpose::SignIn, None, "csrf-a"), now + 1));
        assert!(refused((Purpose::Register, Some(bob), "csrf-a"), now + 1));
        assert!(refused((Purpose::Register, Some(alice), "csrf-b"), now + 1));
        assert!(refused((Purpose::Register, Some(alice), ""), now + 1));
        assert!(refused(
            (Purpose::Register, Some(alice), "csrf-a"),
            now + CEREMONY_TTL.as_secs()
        ));
        // Sealed under another key, or not sealed at all.
        let other = MasterKey::from_bytes([8; 32], "test");
        let foreign = seal_ceremony(&other, Purpose::Register, Some(alice), "csrf-a", now);
        assert!(matches!(
            open_ceremony(
                &master,
                &client_data(&foreign),
                (Purpose::Register, Some(alice), "csrf-a"),
                now
            ),
            Err(PasskeyError::WrongCeremony)
        ));
        assert!(matches!(
            open_ceremony(
                &master,
                &client_data(&[0; 64]),
                (Purpose::SignIn, None, "csrf-a"),
                now
            ),
            Err(PasskeyError::WrongCeremony)
        ));
        // Two challenges for the same ceremony differ (the seal's nonce).
        assert_ne!(
            seal_ceremony(&master, Purpose::SignIn, None, "c", now),
            seal_ceremony(&master, Purpose::SignIn, None, "c", now)
        );
    }

    #[test]
    fn database_failures_are_not_shown_to_the_user() {
        let error = PasskeyError::Unavailable("connection to 10.0.0.5:5432 refused".into());
        assert!(!error.for_user().contains("10.0.0.5"));
        assert!(error.to_string().contains("10.0.0.5"));
        assert_eq!(
            PasskeyError::Replayed.for_user(),
            PasskeyError::Replayed.to_string()
        );
    }

    #[test]
    fn labels_are_trimmed_and_bounded() {
        assert_eq!(check_label("  laptop ").ok(), Some("laptop"));
        assert!(check_label("").is_err());
        assert!(check_label("   ").is_err());
        assert!(check_label(&"x".repeat(MAX_LABEL_CHARS)).is_ok());
        assert!(check_label(&"x".repeat(MAX_LABEL_CHARS + 1)).is_err());
        assert!(check_label("a\nb").is_err());
    }

    #[test]
    fn credentials_are_bounded_and_typed() {
        let oversized = format!("\"{}\"", "a".repeat(MAX_CREDENTIAL_BYTES));
        assert!(matches!(
            parse_credential(&oversized),
            Err(PasskeyError::Malformed(m)) if m.contains("bytes")
        ));
        let wrong_type = r#"{"rawId":"AA","type":"password","response":{"clientDataJSON":"e30"}}"#;
        assert!(matches!(
            parse_credential(wrong_type),
            Err(PasskeyError::Malformed(m)) if m.contains("public-key")
        ));
        let fine = r#"{"id":"AA","rawId":"AA","type":"public-key","response":{"clientDataJSON":"e30","signature":"AA"},"clientExtensionResults":{}}"#;
        assert!(parse_credential(fine).is_ok());
    }
}
