//! WebAuthn (passkeys): Warden's side as the relying party. Pure functions over the bytes
//! a browser returns from `navigator.credentials.create()` and `navigator.credentials.get()`;
//! no I/O, no storage. Issuing challenges, remembering which ones are outstanding, storing
//! credentials and refusing a credential ID that is already registered belong to the caller.
//!
//! What this file owns:
//!
//! - [`RelyingParty::verify_registration`]: the registration ceremony, W3C WebAuthn Level 2
//!   §7.1 ("Registering a New Credential"). It checks the client data, the attestation
//!   object's shape and the authenticator data, parses (and so validates) the credential
//!   public key, and returns a [`NewCredential`] to store.
//! - [`RelyingParty::verify_assertion`]: the authentication ceremony, §7.2 ("Verifying an
//!   Authentication Assertion"): the same client data and authenticator data checks, then
//!   the signature over `authenticatorData || SHA-256(clientDataJSON)` (§6.3.3) with the
//!   stored key. Comparing the signature counter with the stored one is the caller's, with
//!   [`counter_advanced`] (§6.1.1), because only the caller knows the stored value.
//! - [`client_data_challenge`]: the challenge a client data JSON carries, so the caller can
//!   look up the challenge it issued before verifying.
//!
//! What is checked:
//!
//! - client data (§5.8.1): `type` is `webauthn.create` or `webauthn.get`; `challenge`
//!   (base64url) equals the issued challenge, compared in constant time; `origin` equals
//!   [`RelyingParty::origin`] exactly; `crossOrigin: true` and any `topOrigin` (Level 3)
//!   are refused, because Warden's pages never run ceremonies inside another site's frame;
//! - authenticator data (§6.1): `rpIdHash` is SHA-256 of [`RelyingParty::id`]; UP is set;
//!   UV is set when [`RelyingParty::require_user_verification`]; BS is not set without BE
//!   (flags Level 2 reserved and Level 3 defines); attested credential data (§6.5.1) is
//!   present in a registration and absent from an assertion; extensions, when ED is set,
//!   are one CBOR map; nothing follows;
//! - the credential public key (a COSE_Key, RFC 9052 §7, RFC 9053, RFC 8230): EdDSA over
//!   Ed25519 (-8), ES256 over P-256 (-7) and RS256 (-257, RFC 8812) with a modulus of 2048
//!   to 4096 bits; see [`ALGORITHMS`]. The key is parsed, so validated, at registration;
//! - the assertion signature (§6.5.5): ES256 as ASN.1 DER, EdDSA as 64 raw bytes verified
//!   strictly, RS256 as PKCS#1 v1.5 with SHA-256;
//! - every input is at most 64 KiB, refused before it is parsed.
//!
//! What is not checked, on purpose:
//!
//! - Attestation (§6.5, §8). Warden asks for `attestation: "none"`, as passkey relying
//!   parties do: trust in a passkey comes from the account that registered it, not from
//!   the maker of the device that holds it, and synced passkeys carry no attestation
//!   anyway. So any `fmt` is accepted and `attStmt` is never verified (only its type is
//!   checked); an authenticator that attests anyway is treated as if it had not.
//! - Extension outputs: their presence and shape are checked, their content is not (Warden
//!   requests no extensions).
//! - Token binding (`tokenBinding` in client data): ignored, as it is deprecated and no
//!   browser sends it; so are any other unknown client data members.
//! - That the backup eligibility (BE) of an assertion matches the registration's: the
//!   assertion API takes no stored BE; it returns the flag and the caller
//!   (`passkeys.rs`) compares.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ciborium::value::Value as Cbor;
use p256::ecdsa::signature::Verifier as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The relying party: Warden as the passkeys' owner.
#[derive(Clone, Debug)]
pub struct RelyingParty {
    /// The RP ID: a host name (e.g. "warden.example.com" or "localhost").
    pub id: String,
    /// The one origin ceremonies may come from, e.g. "https://warden.example.com" or
    /// "http://localhost:8080" (scheme://host[:port], no path, no trailing slash). Compared
    /// byte for byte with what the browser reports, so the host is written in lower case.
    pub origin: String,
    /// Refuse ceremonies whose authenticator data lacks the UV flag.
    pub require_user_verification: bool,
}

/// COSE algorithm identifier for EdDSA (Warden accepts it over Ed25519 only).
const ALG_EDDSA: i64 = -8;
/// COSE algorithm identifier for ECDSA over P-256 with SHA-256.
const ALG_ES256: i64 = -7;
/// COSE algorithm identifier for RSASSA-PKCS1-v1_5 with SHA-256.
const ALG_RS256: i64 = -257;

/// COSE algorithm identifiers Warden accepts, in preference order (for pubKeyCredParams).
pub const ALGORITHMS: &[i64] = &[ALG_EDDSA, ALG_ES256, ALG_RS256];

/// A credential a registration created, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCredential {
    pub id: Vec<u8>,
    /// The COSE_Key exactly as the authenticator sent it (stored, passed back to
    /// verify_assertion).
    pub public_key: Vec<u8>,
    pub algorithm: i64,
    pub sign_count: u32,
    pub aaguid: [u8; 16],
    pub user_verified: bool,
    pub backup_eligible: bool,
    pub backed_up: bool,
}

/// What an assertion proved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assertion {
    pub sign_count: u32,
    pub user_verified: bool,
    /// BE: the credential may be synced to other devices. Fixed for a credential's life
    /// (WebAuthn Level 3 §6.1.3): the caller compares it with the registration's.
    pub backup_eligible: bool,
    pub backed_up: bool,
}

/// Why a ceremony was refused. Every message names the member, flag or key at fault; none
/// carries secret material (challenges are never echoed).
#[derive(Debug, Error)]
pub enum WebAuthnError {
    /// An input over 64 KiB, refused before parsing.
    #[error("{input} is {size} bytes, over the {MAX_INPUT_BYTES}-byte limit")]
    TooLarge { input: &'static str, size: usize },
    /// The challenge the caller expects is too short to be a real one (§13.4.3 asks for at
    /// least 16 random bytes); a caller bug, refused rather than matched.
    #[error(
        "the expected challenge is {0} bytes; challenges must be at least {MIN_CHALLENGE_BYTES} random bytes"
    )]
    WeakExpectedChallenge(usize),
    /// Client data that is not a JSON object with the members §5.8.1 requires.
    #[error("client data JSON is malformed: {0}")]
    MalformedClientData(String),
    /// `type` names the other ceremony (or none).
    #[error("client data `type` is {found:?}, expected {expected:?}")]
    WrongCeremonyType {
        expected: &'static str,
        found: String,
    },
    /// `challenge` is not the one the caller issued.
    #[error("client data `challenge` does not match the challenge issued")]
    ChallengeMismatch,
    /// `origin` is not [`RelyingParty::origin`].
    #[error("client data `origin` is {found:?}, expected {expected:?}")]
    OriginMismatch { expected: String, found: String },
    /// `crossOrigin: true`: the ceremony ran in a frame of another origin.
    #[error(
        "client data `crossOrigin` is true: ceremonies inside a cross-origin frame are refused"
    )]
    CrossOrigin,
    /// `topOrigin` present: the ceremony ran in a frame embedded in another page.
    #[error("client data carries `topOrigin` {0}: ceremonies inside an embedded frame are refused")]
    TopOrigin(String),
    /// The attestation object is not the CBOR map `{fmt, attStmt, authData}`.
    #[error("attestation object is malformed: {0}")]
    MalformedAttestationObject(String),
    /// Authenticator data too short, truncated, or with malformed attested credential data
    /// or extensions.
    #[error("authenticator data is malformed: {0}")]
    MalformedAuthenticatorData(String),
    /// Bytes after the last structure the flags announce.
    #[error("authenticator data has {0} trailing bytes after what its flags announce (AT, ED)")]
    TrailingAuthenticatorData(usize),
    /// `rpIdHash` is not SHA-256 of the RP ID: the credential is scoped to another site.
    #[error("authenticator data `rpIdHash` is not SHA-256 of the RP ID {0:?}")]
    RpIdMismatch(String),
    /// The UP flag is not set.
    #[error("authenticator data flag UP (user present) is not set")]
    UserNotPresent,
    /// The UV flag is not set and the relying party requires user verification.
    #[error(
        "authenticator data flag UV (user verified) is not set and user verification is required"
    )]
    UserNotVerified,
    /// BS set without BE: a credential cannot be backed up if it may not be.
    #[error(
        "authenticator data flag BS (backed up) is set without BE (backup eligible), which is invalid"
    )]
    BackupStateWithoutEligibility,
    /// A registration whose authenticator data has no attested credential data.
    #[error(
        "authenticator data flag AT is not set: a registration must carry attested credential data"
    )]
    MissingAttestedCredentialData,
    /// An assertion whose authenticator data announces attested credential data.
    #[error("authenticator data flag AT is set: an assertion carries no attested credential data")]
    UnexpectedAttestedCredentialData,
    /// The COSE_Key is not a key Warden can use.
    #[error("credential public key is malformed: {0}")]
    MalformedPublicKey(String),
    /// A COSE algorithm outside [`ALGORITHMS`].
    #[error("COSE algorithm {0} is not supported (Warden accepts -8 EdDSA, -7 ES256, -257 RS256)")]
    UnsupportedAlgorithm(i64),
    /// An RS256 key whose modulus is too short to be safe.
    #[error(
        "RSA credential public key has a {0}-bit modulus; at least {MIN_RSA_MODULUS_BITS} bits are required"
    )]
    RsaKeyTooSmall(usize),
    /// A signature that is not encoded as its algorithm requires.
    #[error("assertion signature is malformed: {0}")]
    MalformedSignature(String),
    /// A well-formed signature that does not verify.
    #[error("assertion signature does not verify with the credential's public key")]
    BadSignature,
}

/// The largest client data JSON, attestation object, authenticator data, stored public
/// key or signature accepted. Real ones are a few hundred bytes (an RSA-4096 key with a
/// long credential ID under 2 KiB); the bound keeps parsing cheap for anything hostile.
const MAX_INPUT_BYTES: usize = 64 * 1024;
/// §13.4.3: challenges should be at least 16 bytes.
const MIN_CHALLENGE_BYTES: usize = 16;
/// §6.5.1: `credentialIdLength` is at most 1023.
const MAX_CREDENTIAL_ID_BYTES: usize = 1023;
/// RSA moduli below this are refused.
const MIN_RSA_MODULUS_BITS: usize = 2048;

/// Authenticator data flags (§6.1).
const FLAG_USER_PRESENT: u8 = 0x01;
const FLAG_USER_VERIFIED: u8 = 0x04;
const FLAG_BACKUP_ELIGIBLE: u8 = 0x08;
const FLAG_BACKED_UP: u8 = 0x10;
const FLAG_ATTESTED_CREDENTIAL_DATA: u8 = 0x40;
const FLAG_EXTENSION_DATA: u8 = 0x80;

/// rpIdHash (32) + flags (1) + signCount (4).
const AUTHENTICATOR_DATA_HEADER_BYTES: usize = 37;

/// COSE_Key labels (RFC 9052 §7.1, RFC 9053 §7).
const COSE_KEY_KTY: i128 = 1;
const COSE_KEY_ALG: i128 = 3;
const COSE_KEY_CRV: i128 = -1;
const COSE_KEY_X: i128 = -2;
const COSE_KEY_Y: i128 = -3;
const COSE_KEY_RSA_N: i128 = -1;
const COSE_KEY_RSA_E: i128 = -2;
/// COSE key types and curves (RFC 9053 §7, RFC 8230 §4).
const KTY_OKP: i128 = 1;
const KTY_EC2: i128 = 2;
const KTY_RSA: i128 = 3;
const CRV_P256: i128 = 1;
const CRV_ED25519: i128 = 6;

/// The challenge a client data JSON carries (base64url-decoded), read before verification
/// so the caller can check it is one it issued.
pub fn client_data_challenge(client_data_json: &[u8]) -> Result<Vec<u8>, WebAuthnError> {
    Ok(ClientData::parse(client_data_json)?.challenge)
}

/// True when a stored and a reported signature counter are consistent: both zero (the
/// authenticator keeps no counter, as synced passkeys do), or the reported one greater
/// than the stored one. False means a possibly cloned authenticator.
pub fn counter_advanced(stored: u32, reported: u32) -> bool {
    (stored == 0 && reported == 0) || reported > stored
}

impl RelyingParty {
    /// Verifies a registration ceremony (§7.1) for the challenge the caller issued, and
    /// returns the credential to store. The caller still refuses a credential ID that is
    /// already registered (§7.1 asks the relying party to).
    pub fn verify_registration(
        &self,
        expected_challenge: &[u8],
        client_data_json: &[u8],
        attestation_object: &[u8],
    ) -> Result<NewCredential, WebAuthnError> {
        check_size("client data JSON", client_data_json)?;
        check_size("attestation object", attestation_object)?;
        self.verify_client_data(Ceremony::Registration, expected_challenge, client_data_json)?;

        let authenticator_data_bytes = authenticator_data_of(attestation_object)?;
        let authenticator_data =
            AuthenticatorData::parse(&authenticator_data_bytes, Ceremony::Registration)?;
        self.verify_authenticator_data(&authenticator_data)?;
        let user_verified = authenticator_data.has(FLAG_USER_VERIFIED);
        let backup_eligible = authenticator_data.has(FLAG_BACKUP_ELIGIBLE);
        let backed_up = authenticator_data.has(FLAG_BACKED_UP);
        let attested = authenticator_data
            .attested_credential
            .ok_or(WebAuthnError::MissingAttestedCredentialData)?;

        // Parsing validates the key (curve point, modulus size) now, so a key Warden could
        // never verify with is refused at registration rather than at every sign-in.
        let public_key = CredentialPublicKey::parse(attested.public_key)?;

        Ok(NewCredential {
            id: attested.credential_id.to_vec(),
            public_key: attested.public_key.to_vec(),
            algorithm: public_key.algorithm(),
            sign_count: authenticator_data.sign_count,
            aaguid: attested.aaguid,
            user_verified,
            backup_eligible,
            backed_up,
        })
    }

    /// Verifies an authentication ceremony (§7.2) with the stored COSE_Key of the
    /// credential the browser named. The caller then compares the returned `sign_count`
    /// with the stored one ([`counter_advanced`]) and stores the new one.
    pub fn verify_assertion(
        &self,
        expected_challenge: &[u8],
        public_key: &[u8],
        client_data_json: &[u8],
        authenticator_data: &[u8],
        signature: &[u8],
    ) -> Result<Assertion, WebAuthnError> {
        check_size("client data JSON", client_data_json)?;
        check_size("authenticator data", authenticator_data)?;
        check_size("credential public key", public_key)?;
        check_size("signature", signature)?;
        self.verify_client_data(
            Ceremony::Authentication,
            expected_challenge,
            client_data_json,
        )?;

        let parsed = AuthenticatorData::parse(authenticator_data, Ceremony::Authentication)?;
        self.verify_authenticator_data(&parsed)?;

        let public_key = CredentialPublicKey::parse(public_key)?;
        let client_data_hash = Sha256::digest(client_data_json);
        let mut signed = Vec::with_capacity(authenticator_data.len() + client_data_hash.len());
        signed.extend_from_slice(authenticator_data);
        signed.extend_from_slice(&client_data_hash);
        public_key.verify(&signed, signature)?;

        Ok(Assertion {
            sign_count: parsed.sign_count,
            user_verified: parsed.has(FLAG_USER_VERIFIED),
            backup_eligible: parsed.has(FLAG_BACKUP_ELIGIBLE),
            backed_up: parsed.has(FLAG_BACKED_UP),
        })
    }

    /// The client data checks of §7.1 and §7.2 (`type`, `challenge`, `origin`), with
    /// `crossOrigin: true` and `topOrigin` refused.
    fn verify_client_data(
        &self,
        ceremony: Ceremony,
        expected_challenge: &[u8],
        client_data_json: &[u8],
    ) -> Result<(), WebAuthnError> {
        if expected_challenge.len() < MIN_CHALLENGE_BYTES {
            return Err(WebAuthnError::WeakExpectedChallenge(
                expected_challenge.len(),
            ));
        }
        let client_data = ClientData::parse(client_data_json)?;
        let expected_type = ceremony.client_data_type();
        if client_data.ceremony_type != expected_type {
            return Err(WebAuthnError::WrongCeremonyType {
                expected: expected_type,
                found: client_data.ceremony_type,
            });
        }
        if !super::secret::equal(&client_data.challenge, expected_challenge) {
            return Err(WebAuthnError::ChallengeMismatch);
        }
        if client_data.origin != self.origin {
            return Err(WebAuthnError::OriginMismatch {
                expected: self.origin.clone(),
                found: client_data.origin,
            });
        }
        if client_data.cross_origin {
            return Err(WebAuthnError::CrossOrigin);
        }
        if let Some(top_origin) = client_data.top_origin {
            return Err(WebAuthnError::TopOrigin(top_origin.to_string()));
        }
        Ok(())
    }

    /// The authenticator data checks of §7.1 and §7.2 (`rpIdHash`, UP, UV) and Level 3's
    /// BE/BS consistency; extension outputs are not inspected.
    fn verify_authenticator_data(
        &self,
        authenticator_data: &AuthenticatorData<'_>,
    ) -> Result<(), WebAuthnError> {
        if authenticator_data.rp_id_hash != Sha256::digest(self.id.as_bytes()).as_slice() {
            return Err(WebAuthnError::RpIdMismatch(self.id.clone()));
        }
        if !authenticator_data.has(FLAG_USER_PRESENT) {
            return Err(WebAuthnError::UserNotPresent);
        }
        if self.require_user_verification && !authenticator_data.has(FLAG_USER_VERIFIED) {
            return Err(WebAuthnError::UserNotVerified);
        }
        if authenticator_data.has(FLAG_BACKED_UP) && !authenticator_data.has(FLAG_BACKUP_ELIGIBLE) {
            return Err(WebAuthnError::BackupStateWithoutEligibility);
        }
        Ok(())
    }
}

/// Which ceremony is being verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ceremony {
    Registration,
    Authentication,
}

impl Ceremony {
    fn client_data_type(self) -> &'static str {
        match self {
            Ceremony::Registration => "webauthn.create",
            Ceremony::Authentication => "webauthn.get",
        }
    }
}

fn check_size(input: &'static str, bytes: &[u8]) -> Result<(), WebAuthnError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(WebAuthnError::TooLarge {
            input,
            size: bytes.len(),
        });
    }
    Ok(())
}

/// The members of `CollectedClientData` (§5.8.1) Warden reads. Each is kept as raw JSON
/// (`Some` even when `null`) so presence and type are checked with messages naming the
/// member; a repeated member is refused by the derive; unknown members are ignored.
#[derive(Deserialize)]
struct RawClientData {
    #[serde(rename = "type", default, deserialize_with = "present")]
    ceremony_type: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    challenge: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    origin: Option<serde_json::Value>,
    #[serde(rename = "crossOrigin", default, deserialize_with = "present")]
    cross_origin: Option<serde_json::Value>,
    #[serde(rename = "topOrigin", default, deserialize_with = "present")]
    top_origin: Option<serde_json::Value>,
}

/// Marks a member present whatever its value, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// Client data with its members type-checked and the challenge decoded.
struct ClientData {
    ceremony_type: String,
    challenge: Vec<u8>,
    origin: String,
    cross_origin: bool,
    top_origin: Option<serde_json::Value>,
}

impl ClientData {
    fn parse(client_data_json: &[u8]) -> Result<ClientData, WebAuthnError> {
        check_size("client data JSON", client_data_json)?;
        // A derived struct would also accept a JSON array, matched by position.
        let first = client_data_json
            .iter()
            .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
        if first != Some(&b'{') {
            return Err(WebAuthnError::MalformedClientData(
                "not a JSON object".into(),
            ));
        }
        let raw: RawClientData = serde_json::from_slice(client_data_json)
            .map_err(|error| WebAuthnError::MalformedClientData(error.to_string()))?;

        let ceremony_type = required_string(raw.ceremony_type, "type")?;
        let challenge = required_string(raw.challenge, "challenge")?;
        let challenge = BASE64URL_ANY_PADDING.decode(challenge).map_err(|error| {
            WebAuthnError::MalformedClientData(format!("`challenge` is not base64url: {error}"))
        })?;
        let origin = required_string(raw.origin, "origin")?;
        let cross_origin = match raw.cross_origin {
            None => false,
            Some(serde_json::Value::Bool(cross_origin)) => cross_origin,
            Some(_) => {
                return Err(WebAuthnError::MalformedClientData(
                    "`crossOrigin` is not a boolean".into(),
                ));
            }
        };
        Ok(ClientData {
            ceremony_type,
            challenge,
            origin,
            cross_origin,
            top_origin: raw.top_origin,
        })
    }
}

/// Browsers send the challenge unpadded; padded is accepted too, as some clients add it.
const BASE64URL_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn required_string(member: Option<serde_json::Value>, name: &str) -> Result<String, WebAuthnError> {
    match member {
        Some(serde_json::Value::String(value)) => Ok(value),
        Some(_) => Err(WebAuthnError::MalformedClientData(format!(
            "`{name}` is not a string"
        ))),
        None => Err(WebAuthnError::MalformedClientData(format!(
            "`{name}` is missing"
        ))),
    }
}

/// Decodes exactly one CBOR item from the front of `bytes`, returning it and what follows.
/// ciborium reads no further than the item's end, so the rest is exact; its recursion limit
/// bounds nesting.
fn decode_one_cbor(bytes: &[u8]) -> Result<(Cbor, &[u8]), String> {
    let mut rest = bytes;
    let value: Cbor = ciborium::from_reader(&mut rest).map_err(describe_cbor_error)?;
    Ok((value, rest))
}

/// ciborium's errors display as their `Debug` form; this says the same in words.
fn describe_cbor_error(error: ciborium::de::Error<std::io::Error>) -> String {
    match error {
        ciborium::de::Error::Io(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            "it ends before the item does".into()
        }
        ciborium::de::Error::Io(error) => error.to_string(),
        ciborium::de::Error::Syntax(offset) => format!("invalid CBOR at byte {offset} of the item"),
        ciborium::de::Error::Semantic(Some(offset), message) => {
            format!("{message} at byte {offset} of the item")
        }
        ciborium::de::Error::Semantic(None, message) => message,
        ciborium::de::Error::RecursionLimitExceeded => "it is nested too deeply".into(),
    }
}

/// The `authData` of an attestation object (§6.5.4). `fmt` and `attStmt` are type-checked
/// only: attestation is not verified (see the module doc).
fn authenticator_data_of(attestation_object: &[u8]) -> Result<Vec<u8>, WebAuthnError> {
    let malformed = WebAuthnError::MalformedAttestationObject;
    let (value, rest) = decode_one_cbor(attestation_object)
        .map_err(|error| malformed(format!("not CBOR: {error}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} bytes follow the CBOR map",
            rest.len()
        )));
    }
    let Cbor::Map(entries) = value else {
        return Err(malformed("not a CBOR map".into()));
    };

    let mut fmt_seen = false;
    let mut att_stmt_seen = false;
    let mut authenticator_data = None;
    for (key, value) in entries {
        // Other keys are ignored, as new ones may be defined.
        let Cbor::Text(key) = key else { continue };
        let seen = match key.as_str() {
            "fmt" => {
                if !value.is_text() {
                    return Err(malformed("`fmt` is not a text string".into()));
                }
                std::mem::replace(&mut fmt_seen, true)
            }
            "attStmt" => {
                if !value.is_map() {
                    return Err(malformed("`attStmt` is not a map".into()));
                }
                std::mem::replace(&mut att_stmt_seen, true)
            }
            "authData" => {
                let Cbor::Bytes(bytes) = value else {
                    return Err(malformed("`authData` is not a byte string".into()));
                };
                authenticator_data.replace(bytes).is_some()
            }
            _ => false,
        };
        if seen {
            return Err(malformed(format!("`{key}` appears more than once")));
        }
    }
    if !fmt_seen {
        return Err(malformed("`fmt` is missing".into()));
    }
    if !att_stmt_seen {
        return Err(malformed("`attStmt` is missing".into()));
    }
    authenticator_data.ok_or_else(|| malformed("`authData` is missing".into()))
}

/// Authenticator data (§6.1), split per its flags.
struct AuthenticatorData<'a> {
    rp_id_hash: &'a [u8; 32],
    flags: u8,
    sign_count: u32,
    attested_credential: Option<AttestedCredentialData<'a>>,
}

/// Attested credential data (§6.5.1).
struct AttestedCredentialData<'a> {
    aaguid: [u8; 16],
    credential_id: &'a [u8],
    /// The COSE_Key's exact bytes.
    public_key: &'a [u8],
}

impl<'a> AuthenticatorData<'a> {
    fn parse(bytes: &'a [u8], ceremony: Ceremony) -> Result<Self, WebAuthnError> {
        let malformed = WebAuthnError::MalformedAuthenticatorData;
        let Some((rp_id_hash, rest)) = bytes.split_first_chunk::<32>() else {
            return Err(too_short(bytes.len()));
        };
        let Some((&[flags], rest)) = rest.split_first_chunk::<1>() else {
            return Err(too_short(bytes.len()));
        };
        let Some((sign_count, mut rest)) = rest.split_first_chunk::<4>() else {
            return Err(too_short(bytes.len()));
        };
        let sign_count = u32::from_be_bytes(*sign_count);

        let attested = flags & FLAG_ATTESTED_CREDENTIAL_DATA != 0;
        match ceremony {
            Ceremony::Registration if !attested => {
                return Err(WebAuthnError::MissingAttestedCredentialData);
            }
            Ceremony::Authentication if attested => {
                return Err(WebAuthnError::UnexpectedAttestedCredentialData);
            }
            _ => {}
        }

        let attested_credential = if attested {
            let (credential, after) = AttestedCredentialData::parse(rest)?;
            rest = after;
            Some(credential)
        } else {
            None
        };

        if flags & FLAG_EXTENSION_DATA != 0 {
            let (extensions, after) = decode_one_cbor(rest).map_err(|error| {
                malformed(format!("extensions (flag ED) are not CBOR: {error}"))
            })?;
            if !extensions.is_map() {
                return Err(malformed("extensions (flag ED) are not a CBOR map".into()));
            }
            rest = after;
        }
        if !rest.is_empty() {
            return Err(WebAuthnError::TrailingAuthenticatorData(rest.len()));
        }

        Ok(AuthenticatorData {
            rp_id_hash,
            flags,
            sign_count,
            attested_credential,
        })
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

fn too_short(length: usize) -> WebAuthnError {
    WebAuthnError::MalformedAuthenticatorData(format!(
        "{length} bytes, shorter than the {AUTHENTICATOR_DATA_HEADER_BYTES}-byte minimum (rpIdHash, flags, signCount)"
    ))
}

impl<'a> AttestedCredentialData<'a> {
    /// Parses attested credential data from the front of `bytes`, returning what follows.
    fn parse(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), WebAuthnError> {
        let malformed = WebAuthnError::MalformedAuthenticatorData;
        let Some((aaguid, rest)) = bytes.split_first_chunk::<16>() else {
            return Err(malformed(
                "attested credential data (flag AT) is truncated before `aaguid` ends".into(),
            ));
        };
        let Some((credential_id_length, rest)) = rest.split_first_chunk::<2>() else {
            return Err(malformed(
                "attested credential data is truncated before `credentialIdLength`".into(),
            ));
        };
        let credential_id_length = usize::from(u16::from_be_bytes(*credential_id_length));
        if credential_id_length == 0 || credential_id_length > MAX_CREDENTIAL_ID_BYTES {
            return Err(malformed(format!(
                "`credentialIdLength` is {credential_id_length}; it must be 1 to {MAX_CREDENTIAL_ID_BYTES}"
            )));
        }
        let Some((credential_id, rest)) = rest.split_at_checked(credential_id_length) else {
            return Err(malformed(format!(
                "`credentialId` is truncated: {credential_id_length} bytes announced, {} present",
                rest.len()
            )));
        };
        // The COSE_Key has no length prefix: its end is where one CBOR item ends.
        let (_, after_key) = decode_one_cbor(rest)
            .map_err(|error| malformed(format!("`credentialPublicKey` is not CBOR: {error}")))?;
        let public_key = &rest[..rest.len() - after_key.len()];
        Ok((
            AttestedCredentialData {
                aaguid: *aaguid,
                credential_id,
                public_key,
            },
            after_key,
        ))
    }
}

/// A credential public key Warden can verify with.
enum CredentialPublicKey {
    EdDsa(ed25519_dalek::VerifyingKey),
    Es256(p256::ecdsa::VerifyingKey),
    Rs256(rsa::RsaPublicKey),
}

impl CredentialPublicKey {
    /// Parses a COSE_Key that must be the whole of `cose_key`.
    fn parse(cose_key: &[u8]) -> Result<Self, WebAuthnError> {
        let malformed = WebAuthnError::MalformedPublicKey;
        let (value, rest) =
            decode_one_cbor(cose_key).map_err(|error| malformed(format!("not CBOR: {error}")))?;
        if !rest.is_empty() {
            return Err(malformed(format!(
                "{} bytes follow the COSE_Key",
                rest.len()
            )));
        }
        let Cbor::Map(entries) = value else {
            return Err(malformed("the COSE_Key is not a CBOR map".into()));
        };
        let mut parameters = BTreeMap::new();
        for (label, value) in &entries {
            // COSE also allows text labels; none of the parameters read here uses one.
            let Some(label) = label.as_integer() else {
                continue;
            };
            let label = i128::from(label);
            if parameters.insert(label, value).is_some() {
                return Err(malformed(format!("label {label} appears more than once")));
            }
        }
        let parameters = CoseKeyParameters(parameters);

        let algorithm = parameters.integer(COSE_KEY_ALG, "alg (3)")?;
        let algorithm = i64::try_from(algorithm)
            .map_err(|_| malformed(format!("alg (3) {algorithm} is out of range")))?;
        let key_type = parameters.integer(COSE_KEY_KTY, "kty (1)")?;
        match algorithm {
            ALG_EDDSA => {
                expect_key_type(key_type, KTY_OKP, "OKP", algorithm)?;
                parameters.expect_curve(CRV_ED25519, "Ed25519")?;
                let x = parameters.fixed_bytes::<32>(COSE_KEY_X, "x (-2)")?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| malformed("x (-2) is not an Ed25519 point".into()))?;
                // A small-order key could never pass `verify_strict`; say so now.
                if key.is_weak() {
                    return Err(malformed("x (-2) is a small-order Ed25519 point".into()));
                }
                Ok(CredentialPublicKey::EdDsa(key))
            }
            ALG_ES256 => {
                expect_key_type(key_type, KTY_EC2, "EC2", algorithm)?;
                parameters.expect_curve(CRV_P256, "P-256")?;
                let x = parameters.fixed_bytes::<32>(COSE_KEY_X, "x (-2)")?;
                let y = parameters.fixed_bytes::<32>(COSE_KEY_Y, "y (-3)")?;
                let mut uncompressed = [0u8; 65];
                uncompressed[0] = 0x04;
                uncompressed[1..33].copy_from_slice(&x);
                uncompressed[33..].copy_from_slice(&y);
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&uncompressed)
                    .map_err(|_| malformed("x (-2), y (-3) are not a P-256 point".into()))?;
                Ok(CredentialPublicKey::Es256(key))
            }
            ALG_RS256 => {
                expect_key_type(key_type, KTY_RSA, "RSA", algorithm)?;
                let modulus =
                    rsa::BigUint::from_bytes_be(parameters.bytes(COSE_KEY_RSA_N, "n (-1)")?);
                let exponent =
                    rsa::BigUint::from_bytes_be(parameters.bytes(COSE_KEY_RSA_E, "e (-2)")?);
                let modulus_bits = modulus.bits();
                if modulus_bits < MIN_RSA_MODULUS_BITS {
                    return Err(WebAuthnError::RsaKeyTooSmall(modulus_bits));
                }
                // Also bounds the modulus at 4096 bits and the exponent to 2..2^33.
                let key = rsa::RsaPublicKey::new(modulus, exponent)
                    .map_err(|error| malformed(format!("RSA key refused: {error}")))?;
                Ok(CredentialPublicKey::Rs256(key))
            }
            other => Err(WebAuthnError::UnsupportedAlgorithm(other)),
        }
    }

    fn algorithm(&self) -> i64 {
        match self {
            CredentialPublicKey::EdDsa(_) => ALG_EDDSA,
            CredentialPublicKey::Es256(_) => ALG_ES256,
            CredentialPublicKey::Rs256(_) => ALG_RS256,
        }
    }

    /// Verifies `signature` over `message` (authenticator data || client data hash), in
    /// the encoding WebAuthn specifies per algorithm (§6.5.5, "Signature Formats").
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), WebAuthnError> {
        match self {
            CredentialPublicKey::EdDsa(key) => {
                let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| {
                    WebAuthnError::MalformedSignature(format!(
                        "an EdDSA signature is 64 bytes, not {}",
                        signature.len()
                    ))
                })?;
                // Strict: refuses small-order keys and non-canonical signatures, so one
                // signature has one meaning.
                key.verify_strict(message, &signature)
                    .map_err(|_| WebAuthnError::BadSignature)
            }
            CredentialPublicKey::Es256(key) => {
                let signature = p256::ecdsa::Signature::from_der(signature).map_err(|_| {
                    WebAuthnError::MalformedSignature(
                        "an ES256 signature must be an ASN.1 DER Ecdsa-Sig-Value".into(),
                    )
                })?;
                // p256 accepts both high and low S, as ECDSA itself does; authenticators
                // are not required to normalise S, so neither is Warden.
                key.verify(message, &signature)
                    .map_err(|_| WebAuthnError::BadSignature)
            }
            CredentialPublicKey::Rs256(key) => {
                let digest = Sha256::digest(message);
                // The padding carries SHA-256's DigestInfo prefix, so a signature over
                // another hash function's digest does not verify.
                key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, signature)
                    .map_err(|_| WebAuthnError::BadSignature)
            }
        }
    }
}

/// A COSE_Key's integer-labelled parameters.
struct CoseKeyParameters<'a>(BTreeMap<i128, &'a Cbor>);

impl<'a> CoseKeyParameters<'a> {
    fn get(&self, label: i128, name: &str) -> Result<&'a Cbor, WebAuthnError> {
        self.0
            .get(&label)
            .copied()
            .ok_or_else(|| WebAuthnError::MalformedPublicKey(format!("{name} is missing")))
    }

    fn integer(&self, label: i128, name: &str) -> Result<i128, WebAuthnError> {
        self.get(label, name)?
            .as_integer()
            .map(i128::from)
            .ok_or_else(|| WebAuthnError::MalformedPublicKey(format!("{name} is not an integer")))
    }

    fn bytes(&self, label: i128, name: &str) -> Result<&'a [u8], WebAuthnError> {
        self.get(label, name)?
            .as_bytes()
            .map(Vec::as_slice)
            .ok_or_else(|| {
                WebAuthnError::MalformedPublicKey(format!("{name} is not a byte string"))
            })
    }

    fn fixed_bytes<const N: usize>(
        &self,
        label: i128,
        name: &str,
    ) -> Result<[u8; N], WebAuthnError> {
        let bytes = self.bytes(label, name)?;
        <[u8; N]>::try_from(bytes).map_err(|_| {
            WebAuthnError::MalformedPublicKey(format!(
                "{name} is {} bytes, expected {N}",
                bytes.len()
            ))
        })
    }

    fn expect_curve(&self, expected: i128, expected_name: &str) -> Result<(), WebAuthnError> {
        let curve = self.integer(COSE_KEY_CRV, "crv (-1)")?;
        if curve != expected {
            return Err(WebAuthnError::MalformedPublicKey(format!(
                "crv (-1) is {curve}; expected {expected} ({expected_name})"
            )));
        }
        Ok(())
    }
}

/// Refuses a `kty` that does not go with `algorithm`.
fn expect_key_type(
    key_type: i128,
    expected: i128,
    expected_name: &str,
    algorithm: i64,
) -> Result<(), WebAuthnError> {
    if key_type != expected {
        return Err(WebAuthnError::MalformedPublicKey(format!(
            "kty (1) is {key_type}; algorithm {algorithm} needs {expected} ({expected_name})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    use p256::ecdsa::signature::Signer as _;
    use rsa::traits::PublicKeyParts as _;

    use super::*;

    /// Asserts that a ceremony was refused with an error matching the pattern, showing
    /// the error when it was another.
    macro_rules! assert_refused {
        ($result:expr, $pattern:pat $(if $guard:expr)?) => {{
            let error = $result.unwrap_err();
            assert!(matches!(error, $pattern $(if $guard)?), "{error}");
        }};
    }

    const RP_ID: &str = "warden.example.com";
    const ORIGIN: &str = "https://warden.example.com";
    const CHALLENGE: &[u8] = b"a challenge Warden issued, 32+ b";
    const CREDENTIAL_ID: &[u8] = &[0xC1; 32];
    const AAGUID: [u8; 16] = [0xAA; 16];
    const UP: u8 = FLAG_USER_PRESENT;
    const UV: u8 = FLAG_USER_VERIFIED;
    const BE: u8 = FLAG_BACKUP_ELIGIBLE;
    const BS: u8 = FLAG_BACKED_UP;
    const AT: u8 = FLAG_ATTESTED_CREDENTIAL_DATA;
    const ED: u8 = FLAG_EXTENSION_DATA;

    // A fixed RSA-2048 test key (`openssl genrsa 2048`, components from `openssl rsa
    // -text`), so no key is generated at test time; e is 65537.
    const RSA_2048_N: &str = concat!(
        "a58b19a2ba7678555923ef269b5c3705d2177c3f0c09dacf6285b0612e3edd61",
        "92e4b110ed8f497f82d1d21f2f2dddb831893baebf8cff4b601e09da161f7cd7",
        "726b252a1180415ecdcd9b259056f305b0be19db33534d80bc61be3dc6dccc12",
        "5bbe0ae074b96cac1587b883f5ba0f3207eb10dc68b9f4886b561496408e33d3",
        "b16111245c7e71287e79f7aab6b412d3919eace3d858bfccb93461cfe7634dba",
        "c968a15a7c636a60c4506edf21c7f56ecf66f09669ab38ec26e49241130d8c99",
        "e526ed01951feba995824a384730a4f2d5e330e4433aeaa2a8780551fabe04c3",
        "762f029e7ad671c30abe320ea32fc50af940f9e61622fd7858549d8f8a26ccaf",
    );
    const RSA_2048_D: &str = concat!(
        "17750ef462949ff7841295f434068c9b6c0a3ce65827db5410a35dfb5f48b428",
        "fbde2103038e8ebd1d45eb0ed52a1c255a0b96a3ebeba84f3f76f2316f7a15c0",
        "17abfc0faa7c3087250571eb103969e5500697f65a1eff37f339ac71e78868f8",
        "5efc9e60f0d9477f58ebaae733fe21e216822618fd5400450664a3b528bf9db3",
        "327f7f20fe7bbf87739a25b11592c6674c27bfde6c7aed22d38a1ee39b5e3c49",
        "baf3d27f0e074a11d227c233809559e10b8ca9f455bafeceaede6e77a762cfb8",
        "69c4a452ddc692a67eb50304eff5c51dc0cb9560a33448eaff27c33f26819ae6",
        "d305e95f661f4a26691cf2bd4090b6ee1df60344aefbf1b4df193c96e9bf1775",
    );
    const RSA_2048_P: &str = concat!(
        "dfbf81d6504ace8b1b6d6f8ce151f77474a4e412a563515c83500a2043d437c0",
        "7f8458d407e2ae7968d5534769f883f485aebb2ac975a08b55d6c3c045f9760c",
        "e24ff7b45b88ef4537806fc0da7ec64eef76c4e9788b07445945a3b09cb64001",
        "369c3ebd671b549727380d0e0be339991a873b27c1e430b196e7da704043f605",
    );
    const RSA_2048_Q: &str = concat!(
        "bd67ca33a9bd6683715e02e82ad1221c11a17216421fe8a63208b81146157be4",
        "b985be793c6fa3cb1f658a6785f22322ab2625360b615ed3ce9c713a69bdfade",
        "1266513cae9cea322f83f680e16f55ba856b8c760e0c85fa4ef490b78d3b4b2d",
        "4aeca2d872e2fb61f7bf8afb039c3a197ad1cdff101fbd940d3791120509a223",
    );
    const RSA_1024_N: &str = concat!(
        "e09f21a71ccf7ac23da5a7bb08fa3eab61d739b7a27647d5947c6f4c8fcbca9b",
        "7029badbe02da3cd1ef18f29221ae1e807f4923a7e7e6108964976b154e45a4c",
        "1ab6164654e86574717b49f7219996608cae7442fbc159737d9025b588cd5c02",
        "c39dc0bc7ee010337bb85175faf93b1268da849b6d65b5648c7301a5fadcaae3",
    );

    fn relying_party(require_user_verification: bool) -> RelyingParty {
        RelyingParty {
            id: RP_ID.into(),
            origin: ORIGIN.into(),
            require_user_verification,
        }
    }

    fn int(value: i64) -> Cbor {
        Cbor::Integer(value.into())
    }

    fn encode(value: &Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    fn unhex(text: &str) -> rsa::BigUint {
        rsa::BigUint::from_bytes_be(&hex::decode(text).unwrap())
    }

    /// A signing key of each algorithm, from fixed bytes.
    enum TestKey {
        EdDsa(ed25519_dalek::SigningKey),
        Es256(p256::ecdsa::SigningKey),
        Rs256(Box<rsa::RsaPrivateKey>),
    }

    impl TestKey {
        fn eddsa(seed: u8) -> TestKey {
            TestKey::EdDsa(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
        }

        fn es256(seed: u8) -> TestKey {
            TestKey::Es256(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap())
        }

        fn rs256() -> TestKey {
            let key = rsa::RsaPrivateKey::from_components(
                unhex(RSA_2048_N),
                rsa::BigUint::from(65537u32),
                unhex(RSA_2048_D),
                vec![unhex(RSA_2048_P), unhex(RSA_2048_Q)],
            )
            .unwrap();
            TestKey::Rs256(Box::new(key))
        }

        fn algorithm(&self) -> i64 {
            match self {
                TestKey::EdDsa(_) => ALG_EDDSA,
                TestKey::Es256(_) => ALG_ES256,
                TestKey::Rs256(_) => ALG_RS256,
            }
        }

        /// The public key as a COSE_Key, as an authenticator encodes it.
        fn cose_key(&self) -> Vec<u8> {
            let entries = match self {
                TestKey::EdDsa(key) => vec![
                    (int(1), int(1)),
                    (int(3), int(ALG_EDDSA)),
                    (int(-1), int(6)),
                    (
                        int(-2),
                        Cbor::Bytes(key.verifying_key().to_bytes().to_vec()),
                    ),
                ],
                TestKey::Es256(key) => {
                    let point = key.verifying_key().to_encoded_point(false);
                    vec![
                        (int(1), int(2)),
                        (int(3), int(ALG_ES256)),
                        (int(-1), int(1)),
                        (int(-2), Cbor::Bytes(point.x().unwrap().to_vec())),
                        (int(-3), Cbor::Bytes(point.y().unwrap().to_vec())),
                    ]
                }
                TestKey::Rs256(key) => vec![
                    (int(1), int(3)),
                    (int(3), int(ALG_RS256)),
                    (int(-1), Cbor::Bytes(key.n().to_bytes_be())),
                    (int(-2), Cbor::Bytes(key.e().to_bytes_be())),
                ],
            };
            encode(&Cbor::Map(entries))
        }

        /// Signs as an authenticator does, in WebAuthn's encoding for the algorithm.
        fn sign(&self, message: &[u8]) -> Vec<u8> {
            match self {
                TestKey::EdDsa(key) => key.sign(message).to_bytes().to_vec(),
                TestKey::Es256(key) => {
                    let signature: p256::ecdsa::Signature = key.sign(message);
                    signature.to_der().as_bytes().to_vec()
                }
                TestKey::Rs256(key) => key
                    .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message))
                    .unwrap(),
            }
        }
    }

    fn client_data(ceremony_type: &str, challenge: &[u8], origin: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"type":"{ceremony_type}","challenge":"{}","origin":"{origin}"{extra}}}"#,
            URL_SAFE_NO_PAD.encode(challenge)
        )
        .into_bytes()
    }

    fn create_client_data() -> Vec<u8> {
        client_data(
            "webauthn.create",
            CHALLENGE,
            ORIGIN,
            r#","crossOrigin":false"#,
        )
    }

    fn get_client_data() -> Vec<u8> {
        client_data("webauthn.get", CHALLENGE, ORIGIN, r#","crossOrigin":false"#)
    }

    /// Authenticator data: rpIdHash, flags, counter, then (with AT set by the caller)
    /// attested credential data carrying `cose_key`.
    fn authenticator_data(
        rp_id: &str,
        flags: u8,
        sign_count: u32,
        cose_key: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut out = Sha256::digest(rp_id.as_bytes()).to_vec();
        out.push(flags);
        out.extend_from_slice(&sign_count.to_be_bytes());
        if let Some(cose_key) = cose_key {
            out.extend_from_slice(&AAGUID);
            out.extend_from_slice(&(CREDENTIAL_ID.len() as u16).to_be_bytes());
            out.extend_from_slice(CREDENTIAL_ID);
            out.extend_from_slice(cose_key);
        }
        out
    }

    fn attestation_object_with(fmt: &str, att_stmt: Cbor, auth_data: &[u8]) -> Vec<u8> {
        encode(&Cbor::Map(vec![
            (Cbor::Text("fmt".into()), Cbor::Text(fmt.into())),
            (Cbor::Text("attStmt".into()), att_stmt),
            (
                Cbor::Text("authData".into()),
                Cbor::Bytes(auth_data.to_vec()),
            ),
        ]))
    }

    fn attestation_object(auth_data: &[u8]) -> Vec<u8> {
        attestation_object_with("none", Cbor::Map(Vec::new()), auth_data)
    }

    /// The attestation object of a registration of `cose_key` with `flags` (AT added).
    fn registration_with(cose_key: &[u8], flags: u8) -> Vec<u8> {
        attestation_object(&authenticator_data(RP_ID, flags | AT, 0, Some(cose_key)))
    }

    fn register(
        rp: &RelyingParty,
        client_data_json: &[u8],
        attestation_object: &[u8],
    ) -> Result<NewCredential, WebAuthnError> {
        rp.verify_registration(CHALLENGE, client_data_json, attestation_object)
    }

    /// A signed assertion: (client data, authenticator data, signature).
    fn signed_assertion(key: &TestKey, client_data_json: &[u8], auth_data: &[u8]) -> Vec<u8> {
        let mut message = auth_data.to_vec();
        message.extend_from_slice(&Sha256::digest(client_data_json));
        key.sign(&message)
    }

    fn assert_with(
        rp: &RelyingParty,
        public_key: &[u8],
        client_data_json: &[u8],
        auth_data: &[u8],
        signature: &[u8],
    ) -> Result<Assertion, WebAuthnError> {
        rp.verify_assertion(
            CHALLENGE,
            public_key,
            client_data_json,
            auth_data,
            signature,
        )
    }

    /// Registers `key`, then signs in with it twice, and checks what each step reports.
    fn registration_and_assertion(key: TestKey) {
        let rp = relying_party(true);
        let cose_key = key.cose_key();
        let credential = register(
            &rp,
            &create_client_data(),
            &registration_with(&cose_key, UP | UV | BE | BS),
        )
        .unwrap();
        assert_eq!(
            credential,
            NewCredential {
                id: CREDENTIAL_ID.to_vec(),
                public_key: cose_key.clone(),
                algorithm: key.algorithm(),
                sign_count: 0,
                aaguid: AAGUID,
                user_verified: true,
                backup_eligible: true,
                backed_up: true,
            }
        );

        let client_data_json = get_client_data();
        let auth_data = authenticator_data(RP_ID, UP | UV | BE, 7, None);
        let signature = signed_assertion(&key, &client_data_json, &auth_data);
        let asserted = assert_with(
            &rp,
            &credential.public_key,
            &client_data_json,
            &auth_data,
            &signature,
        )
        .unwrap();
        assert_eq!(
            asserted,
            Assertion {
                sign_count: 7,
                user_verified: true,
                backup_eligible: true,
                backed_up: false,
            }
        );
        assert!(counter_advanced(credential.sign_count, asserted.sign_count));
    }

    #[test]
    fn es256_registration_and_assertion() {
        registration_and_assertion(TestKey::es256(0x11));
    }

    #[test]
    fn eddsa_registration_and_assertion() {
        registration_and_assertion(TestKey::eddsa(0x22));
    }

    #[test]
    fn rs256_registration_and_assertion() {
        registration_and_assertion(TestKey::rs256());
    }

    #[test]
    fn wrong_ceremony_type_is_refused() {
        let rp = relying_party(false);
        let key = TestKey::es256(0x11);
        let cose_key = key.cose_key();
        let get = get_client_data();
        let error = register(&rp, &get, &registration_with(&cose_key, UP)).unwrap_err();
        assert!(
            matches!(&error, WebAuthnError::WrongCeremonyType { expected: "webauthn.create", found } if found == "webauthn.get"),
            "{error}"
        );

        let create = create_client_data();
        let auth_data = authenticator_data(RP_ID, UP, 1, None);
        let signature = signed_assertion(&key, &create, &auth_data);
        assert_refused!(
            assert_with(&rp, &cose_key, &create, &auth_data, &signature),
            WebAuthnError::WrongCeremonyType {
                expected: "webauthn.get",
                ..
            }
        );
    }

    #[test]
    fn wrong_challenge_is_refused() {
        let rp = relying_party(false);
        let key = TestKey::eddsa(0x22);
        let cose_key = key.cose_key();
        let other = client_data(
            "webauthn.create",
            b"another challenge, 32 bytes long",
            ORIGIN,
            "",
        );
        assert_refused!(
            register(&rp, &other, &registration_with(&cose_key, UP)),
            WebAuthnError::ChallengeMismatch
        );

        let get = get_client_data();
        let auth_data = authenticator_data(RP_ID, UP, 1, None);
        let signature = signed_assertion(&key, &get, &auth_data);
        assert_refused!(
            rp.verify_assertion(
                b"a different issued challenge!!!!",
                &cose_key,
                &get,
                &auth_data,
                &signature,
            ),
            WebAuthnError::ChallengeMismatch
        );

        // Challenges of another length: empty, a prefix, one byte more.
        let longer = [CHALLENGE, b"!"].concat();
        for answered in [&b""[..], &CHALLENGE[..16], &longer] {
            let other = client_data("webauthn.create", answered, ORIGIN, "");
            assert_refused!(
                register(&rp, &other, &registration_with(&cose_key, UP)),
                WebAuthnError::ChallengeMismatch
            );
            let get = client_data("webauthn.get", answered, ORIGIN, "");
            let signature = signed_assertion(&key, &get, &auth_data);
            assert_refused!(
                rp.verify_assertion(CHALLENGE, &cose_key, &get, &auth_data, &signature),
                WebAuthnError::ChallengeMismatch
            );
        }
    }

    #[test]
    fn an_empty_expected_challenge_is_a_caller_bug() {
        let rp = relying_party(false);
        let empty = client_data("webauthn.create", b"", ORIGIN, "");
        let cose_key = TestKey::eddsa(0x22).cose_key();
        assert_refused!(
            rp.verify_registration(b"", &empty, &registration_with(&cose_key, UP)),
            WebAuthnError::WeakExpectedChallenge(0)
        );
    }

    #[test]
    fn wrong_origin_is_refused() {
        let rp = relying_party(false);
        let cose_key = TestKey::es256(0x11).cose_key();
        for origin in [
            "https://evil.example.com",
            "http://warden.example.com",
            "https://warden.example.com:8443",
            "https://warden.example.com/",
        ] {
            let data = client_data("webauthn.create", CHALLENGE, origin, "");
            let error = register(&rp, &data, &registration_with(&cose_key, UP)).unwrap_err();
            assert!(
                matches!(&error, WebAuthnError::OriginMismatch { found, .. } if found == origin),
                "{origin}: {error}"
            );
        }
    }

    #[test]
    fn cross_origin_and_top_origin_are_refused() {
        let rp = relying_party(false);
        let cose_key = TestKey::es256(0x11).cose_key();
        let attestation = registration_with(&cose_key, UP);

        let cross = client_data(
            "webauthn.create",
            CHALLENGE,
            ORIGIN,
            r#","crossOrigin":true"#,
        );
        assert_refused!(
            register(&rp, &cross, &attestation),
            WebAuthnError::CrossOrigin
        );

        let top = client_data(
            "webauthn.create",
            CHALLENGE,
            ORIGIN,
            r#","crossOrigin":true,"topOrigin":"https://evil.example.com""#,
        );
        assert!(matches!(
            register(&rp, &top, &attestation),
            Err(WebAuthnError::CrossOrigin)
        ));
        let top = client_data("webauthn.create", CHALLENGE, ORIGIN, r#","topOrigin":null"#);
        assert!(matches!(
            register(&rp, &top, &attestation),
            Err(WebAuthnError::TopOrigin(_))
        ));

        // Absent is the same as false; unknown members (tokenBinding, others) are ignored.
        let plain = client_data(
            "webauthn.create",
            CHALLENGE,
            ORIGIN,
            r#","tokenBinding":{"status":"supported"},"other_keys_can_be_added_here":"x""#,
        );
        register(&rp, &plain, &attestation).unwrap();
    }

    #[test]
    fn malformed_client_data_is_refused_naming_the_member() {
        let rp = relying_party(false);
        let attestation = registration_with(&TestKey::es256(0x11).cose_key(), UP);
        let challenge = URL_SAFE_NO_PAD.encode(CHALLENGE);
        let cases = [
            (
                format!(r#"{{"challenge":"{challenge}","origin":"{ORIGIN}"}}"#),
                "`type` is missing",
            ),
            (
                format!(r#"{{"type":5,"challenge":"{challenge}","origin":"{ORIGIN}"}}"#),
                "`type` is not a string",
            ),
            (
                format!(r#"{{"type":"webauthn.create","challenge":"{challenge}"}}"#),
                "`origin` is missing",
            ),
            (
                format!(r#"{{"type":"webauthn.create","challenge":"a+b/","origin":"{ORIGIN}"}}"#),
                "`challenge` is not base64url",
            ),
            (
                format!(
                    r#"{{"type":"webauthn.create","challenge":"{challenge}","origin":"{ORIGIN}","crossOrigin":"no"}}"#
                ),
                "`crossOrigin` is not a boolean",
            ),
            (
                format!(
                    r#"{{"type":"webauthn.create","type":"webauthn.create","challenge":"{challenge}","origin":"{ORIGIN}"}}"#
                ),
                "duplicate field `type`",
            ),
            (
                format!(r#"["webauthn.create","{challenge}","{ORIGIN}"]"#),
                "not a JSON object",
            ),
        ];
        for (json, expected) in cases {
            let error = register(&rp, json.as_bytes(), &attestation).unwrap_err();
            assert!(
                matches!(&error, WebAuthnError::MalformedClientData(message) if message.contains(expected)),
                "{json}: {error}"
            );
        }
        // Deep nesting costs no stack: serde_json skips an ignored member iteratively, and
        // stops a member it reads at its recursion limit.
        let nested = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        let ignored = format!(
            r#"{{"type":"webauthn.create","challenge":"{challenge}","origin":"{ORIGIN}","x":{nested}}}"#
        );
        register(&rp, ignored.as_bytes(), &attestation).unwrap();
        let read = format!(
            r#"{{"type":"webauthn.create","challenge":"{challenge}","origin":"{ORIGIN}","topOrigin":{nested}}}"#
        );
        assert!(matches!(
            register(&rp, read.as_bytes(), &attestation),
            Err(WebAuthnError::MalformedClientData(_))
        ));
    }

    #[test]
    fn wrong_rp_id_hash_is_refused() {
        let rp = relying_party(false);
        let key = TestKey::es256(0x11);
        let cose_key = key.cose_key();
        let other_site = attestation_object(&authenticator_data(
            "evil.example.com",
            UP | AT,
            0,
            Some(&cose_key),
        ));
        let error = register(&rp, &create_client_data(), &other_site).unwrap_err();
        assert!(
            matches!(&error, WebAuthnError::RpIdMismatch(id) if id == RP_ID),
            "{error}"
        );

        let get = get_client_data();
        let auth_data = authenticator_data("evil.example.com", UP, 1, None);
        let signature = signed_assertion(&key, &get, &auth_data);
        assert_refused!(
            assert_with(&rp, &cose_key, &get, &auth_data, &signature),
            WebAuthnError::RpIdMismatch(_)
        );
    }

    #[test]
    fn user_presence_is_required() {
        let rp = relying_party(false);
        let key = TestKey::eddsa(0x22);
        let cose_key = key.cose_key();
        assert_refused!(
            register(
                &rp,
                &create_client_data(),
                &registration_with(&cose_key, UV),
            ),
            WebAuthnError::UserNotPresent
        );

        let get = get_client_data();
        let auth_data = authenticator_data(RP_ID, UV, 1, None);
        let signature = signed_assertion(&key, &get, &auth_data);
        assert_refused!(
            assert_with(&rp, &cose_key, &get, &auth_data, &signature),
            WebAuthnError::UserNotPresent
        );
    }

    #[test]
    fn user_verification_is_required_only_when_configured() {
        let key = TestKey::es256(0x11);
        let cose_key = key.cose_key();
        let attestation = registration_with(&cose_key, UP);
        let get = get_client_data();
        let auth_data = authenticator_data(RP_ID, UP, 1, None);
        let signature = signed_assertion(&key, &get, &auth_data);

        let strict = relying_party(true);
        assert_refused!(
            register(&strict, &create_client_data(), &attestation),
            WebAuthnError::UserNotVerified
        );
        assert_refused!(
            assert_with(&strict, &cose_key, &get, &auth_data, &signature),
            WebAuthnError::UserNotVerified
        );

        let lenient = relying_party(false);
        let credential = register(&lenient, &create_client_data(), &attestation).unwrap();
        assert!(!credential.user_verified);
        let asserted = assert_with(&lenient, &cose_key, &get, &auth_data, &signature).unwrap();
        assert!(!asserted.user_verified);
    }

    #[test]
    fn tampered_authenticator_data_is_refused() {
        let rp = relying_party(false);
        for key in [TestKey::es256(0x11), TestKey::eddsa(0x22), TestKey::rs256()] {
            let cose_key = key.cose_key();
            let get = get_client_data();
            let auth_data = authenticator_data(RP_ID, UP, 1, None);
            let signature = signed_assertion(&key, &get, &auth_data);
            let mut tampered = auth_data.clone();
            tampered[36] = 200; // the counter, moved forward
            assert_refused!(
                assert_with(&rp, &cose_key, &get, &tampered, &signature),
                WebAuthnError::BadSignature
            );
            let mut tampered = auth_data.clone();
            tampered[32] |= UV; // a user verification that did not happen
            assert_refused!(
                assert_with(&rp, &cose_key, &get, &tampered, &signature),
                WebAuthnError::BadSignature
            );
            // The client data is signed too (through its hash).
            let other = client_data("webauthn.get", CHALLENGE, ORIGIN, "");
            assert_refused!(
                assert_with(&rp, &cose_key, &other, &auth_data, &signature),
                WebAuthnError::BadSignature
            );
        }
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let rp = relying_party(false);
        let get = get_client_data();
        let auth_data = authenticator_data(RP_ID, UP, 1, None);
        for (registered, signer) in [
            (TestKey::es256(0x11), TestKey::es256(0x33)),
            (TestKey::eddsa(0x22), TestKey::eddsa(0x44)),
        ] {
            let signature = signed_assertion(&signer, &get, &auth_data);
            let error =
                assert_with(&rp, &registered.cose_key(), &get, &auth_data, &signature).unwrap_err();
            assert!(matches!(error, WebAuthnError::BadSignature), "{error}");
        }
        // An RSA signature checked with an ES256 key is not even an ECDSA signature.
        let signature = signed_assertion(&TestKey::rs256(), &get, &auth_data);
        assert_refused!(
            assert_with(
                &rp,
                &TestKey::es256(0x11).cose_key(),
                &get,
                &auth_data,
                &signature,
            ),
            WebAuthnError::MalformedSignature(_)
        );
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let rp = relying_party(false);
        let get = get_client_data();
        let auth_data = authenticator_data(RP_ID, UP, 1, None);

        // ES256 signatures are DER, not the raw r || s of JOSE.
        let key = p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
        let mut message = auth_data.clone();
        message.extend_from_slice(&Sha256::digest(&get));
        let raw: p256::ecdsa::Signature = key.sign(&message);
        assert_refused!(
            assert_with(
                &rp,
                &TestKey::es256(0x11).cose_key(),
                &get,
                &auth_data,
                &raw.to_bytes(),
            ),
            WebAuthnError::MalformedSignature(_)
        );

        let eddsa = TestKey::eddsa(0x22).cose_key();
        let with_eddsa = |signature: &[u8]| assert_with(&rp, &eddsa, &get, &auth_data, signature);
        assert_refused!(with_eddsa(&[0; 63]), WebAuthnError::MalformedSignature(_));
        assert_refused!(with_eddsa(&[0; 64]), WebAuthnError::BadSignature);
    }

    #[test]
    fn unsupported_algorithm_is_refused() {
        let rp = relying_party(false);
        // ES384 (-35) over P-384: well formed, but not an algorithm Warden offers.
        let es384 = encode(&Cbor::Map(vec![
            (int(1), int(2)),
            (int(3), int(-35)),
            (int(-1), int(2)),
            (int(-2), Cbor::Bytes(vec![1; 48])),
            (int(-3), Cbor::Bytes(vec![2; 48])),
        ]));
        let error =
            register(&rp, &create_client_data(), &registration_with(&es384, UP)).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::UnsupportedAlgorithm(-35)),
            "{error}"
        );
        assert!(error.to_string().contains("-35"));
    }

    #[test]
    fn malformed_cose_keys_are_refused() {
        let rp = relying_party(false);
        let x = Cbor::Bytes(vec![9; 32]);
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let cases = [
            (
                vec![(int(1), int(2)), (int(-1), int(1))],
                "alg (3) is missing",
            ),
            (
                vec![(int(1), int(1)), (int(3), int(ALG_ES256))],
                "kty (1) is 1",
            ),
            (
                vec![
                    (int(1), int(2)),
                    (int(3), int(ALG_ES256)),
                    (int(-1), int(2)),
                ],
                "crv (-1) is 2",
            ),
            (
                vec![
                    (int(1), int(2)),
                    (int(3), int(ALG_ES256)),
                    (int(-1), int(1)),
                    (int(-2), Cbor::Bytes(vec![9; 31])),
                    (int(-3), x.clone()),
                ],
                "x (-2) is 31 bytes",
            ),
            (
                vec![
                    (int(1), int(2)),
                    (int(3), int(ALG_ES256)),
                    (int(-1), int(1)),
                    (int(-2), x.clone()),
                    (int(-3), x.clone()),
                ],
                "not a P-256 point",
            ),
            (
                // The Ed25519 identity point (y = 1): small order, useless as a key.
                vec![
                    (int(1), int(1)),
                    (int(3), int(ALG_EDDSA)),
                    (int(-1), int(6)),
                    (int(-2), Cbor::Bytes(identity_point.to_vec())),
                ],
                "small-order",
            ),
            (
                vec![
                    (int(1), int(1)),
                    (int(3), int(ALG_EDDSA)),
                    (int(3), int(ALG_EDDSA)),
                ],
                "label 3 appears more than once",
            ),
            (
                vec![
                    (int(1), int(3)),
                    (int(3), int(ALG_RS256)),
                    (int(-1), Cbor::Text("n".into())),
                ],
                "n (-1) is not a byte string",
            ),
        ];
        for (entries, expected) in cases {
            let cose_key = encode(&Cbor::Map(entries));
            let error = register(
                &rp,
                &create_client_data(),
                &registration_with(&cose_key, UP),
            )
            .unwrap_err();
            assert!(
                matches!(&error, WebAuthnError::MalformedPublicKey(message) if message.contains(expected)),
                "{expected}: {error}"
            );
        }
    }

    #[test]
    fn rsa_keys_under_2048_bits_are_refused() {
        let rp = relying_party(false);
        let small = encode(&Cbor::Map(vec![
            (int(1), int(3)),
            (int(3), int(ALG_RS256)),
            (int(-1), Cbor::Bytes(hex::decode(RSA_1024_N).unwrap())),
            (int(-2), Cbor::Bytes(vec![1, 0, 1])),
        ]));
        let error =
            register(&rp, &create_client_data(), &registration_with(&small, UP)).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::RsaKeyTooSmall(1024)),
            "{error}"
        );
        // The same check applies to a stored key at sign-in.
        let get = get_client_data();
        let auth_data = authenticator_data(RP_ID, UP, 1, None);
        assert_refused!(
            assert_with(&rp, &small, &get, &auth_data, &[0; 128]),
            WebAuthnError::RsaKeyTooSmall(1024)
        );
    }

    #[test]
    fn trailing_bytes_after_the_cose_key_without_ed_are_refused() {
        let rp = relying_party(false);
        let cose_key = TestKey::es256(0x11).cose_key();
        let mut auth_data = authenticator_data(RP_ID, UP | AT, 0, Some(&cose_key));
        auth_data.extend_from_slice(&[0xA0, 0x00]);
        let error =
            register(&rp, &create_client_data(), &attestation_object(&auth_data)).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::TrailingAuthenticatorData(2)),
            "{error}"
        );

        let mut assertion_data = authenticator_data(RP_ID, UP, 1, None);
        assertion_data.push(0);
        assert_refused!(
            assert_with(
                &rp,
                &cose_key,
                &get_client_data(),
                &assertion_data,
                &[0; 64],
            ),
            WebAuthnError::TrailingAuthenticatorData(1)
        );
    }

    #[test]
    fn extensions_with_ed_are_accepted() {
        let rp = relying_party(false);
        let key = TestKey::eddsa(0x22);
        let cose_key = key.cose_key();
        let extensions = encode(&Cbor::Map(vec![(Cbor::Text("credProtect".into()), int(2))]));

        let mut auth_data = authenticator_data(RP_ID, UP | AT | ED, 0, Some(&cose_key));
        auth_data.extend_from_slice(&extensions);
        let credential =
            register(&rp, &create_client_data(), &attestation_object(&auth_data)).unwrap();
        assert_eq!(
            credential.public_key, cose_key,
            "the key ends where its CBOR item ends"
        );

        let get = get_client_data();
        let mut assertion_data = authenticator_data(RP_ID, UP | ED, 3, None);
        assertion_data.extend_from_slice(&extensions);
        let signature = signed_assertion(&key, &get, &assertion_data);
        assert_eq!(
            assert_with(&rp, &cose_key, &get, &assertion_data, &signature)
                .unwrap()
                .sign_count,
            3
        );

        // ED with something other than one map, or something after it, is refused.
        let mut not_a_map = authenticator_data(RP_ID, UP | ED, 3, None);
        not_a_map.push(0x01);
        assert_refused!(
            assert_with(&rp, &cose_key, &get, &not_a_map, &signature),
            WebAuthnError::MalformedAuthenticatorData(_)
        );
        let mut missing = authenticator_data(RP_ID, UP | ED, 3, None);
        assert_refused!(
            assert_with(&rp, &cose_key, &get, &missing, &signature),
            WebAuthnError::MalformedAuthenticatorData(_)
        );
        missing.extend_from_slice(&extensions);
        missing.push(0xA0);
        assert_refused!(
            assert_with(&rp, &cose_key, &get, &missing, &signature),
            WebAuthnError::TrailingAuthenticatorData(1)
        );
    }

    #[test]
    fn backup_state_without_eligibility_is_refused() {
        let rp = relying_party(false);
        let key = TestKey::es256(0x11);
        let cose_key = key.cose_key();
        assert_refused!(
            register(
                &rp,
                &create_client_data(),
                &registration_with(&cose_key, UP | BS),
            ),
            WebAuthnError::BackupStateWithoutEligibility
        );

        let get = get_client_data();
        let auth_data = authenticator_data(RP_ID, UP | BS, 1, None);
        let signature = signed_assertion(&key, &get, &auth_data);
        assert_refused!(
            assert_with(&rp, &cose_key, &get, &auth_data, &signature),
            WebAuthnError::BackupStateWithoutEligibility
        );

        let credential = register(
            &rp,
            &create_client_data(),
            &registration_with(&cose_key, UP | BE),
        )
        .unwrap();
        assert!(credential.backup_eligible && !credential.backed_up);
    }

    #[test]
    fn attested_credential_data_belongs_to_registrations_only() {
        let rp = relying_party(false);
        let key = TestKey::es256(0x11);
        let cose_key = key.cose_key();
        let without = attestation_object(&authenticator_data(RP_ID, UP, 0, None));
        assert_refused!(
            register(&rp, &create_client_data(), &without),
            WebAuthnError::MissingAttestedCredentialData
        );

        let get = get_client_data();
        let auth_data = authenticator_data(RP_ID, UP | AT, 1, Some(&cose_key));
        let signature = signed_assertion(&key, &get, &auth_data);
        assert_refused!(
            assert_with(&rp, &cose_key, &get, &auth_data, &signature),
            WebAuthnError::UnexpectedAttestedCredentialData
        );
    }

    #[test]
    fn malformed_authenticator_data_is_refused() {
        let rp = relying_party(false);
        let cose_key = TestKey::es256(0x11).cose_key();
        let short = authenticator_data(RP_ID, UP, 1, None)[..36].to_vec();
        assert_refused!(
            assert_with(&rp, &cose_key, &get_client_data(), &short, &[0; 64]),
            WebAuthnError::MalformedAuthenticatorData(_)
        );

        let full = authenticator_data(RP_ID, UP | AT, 0, Some(&cose_key));
        // Cut inside the aaguid, inside the credential ID, and inside the COSE_Key.
        for (cut, expected) in [
            (40, "before `aaguid` ends"),
            (37 + 18 + 10, "`credentialId` is truncated"),
            (
                full.len() - 1,
                "`credentialPublicKey` is not CBOR: it ends before the item does",
            ),
        ] {
            let error = register(
                &rp,
                &create_client_data(),
                &attestation_object(&full[..cut]),
            )
            .unwrap_err();
            assert!(
                matches!(&error, WebAuthnError::MalformedAuthenticatorData(message) if message.contains(expected)),
                "{cut}: {error}"
            );
        }
        // A credential ID over 1023 bytes.
        let mut long_id = full[..37 + 16].to_vec();
        long_id.extend_from_slice(&1024u16.to_be_bytes());
        long_id.extend_from_slice(&[0; 1024]);
        long_id.extend_from_slice(&cose_key);
        let error =
            register(&rp, &create_client_data(), &attestation_object(&long_id)).unwrap_err();
        assert!(
            matches!(&error, WebAuthnError::MalformedAuthenticatorData(message) if message.contains("1024")),
            "{error}"
        );
    }

    #[test]
    fn attestation_is_not_verified_but_its_shape_is() {
        let rp = relying_party(false);
        let cose_key = TestKey::eddsa(0x22).cose_key();
        let auth_data = authenticator_data(RP_ID, UP | AT, 0, Some(&cose_key));
        // An authenticator that attests anyway is treated as if it had not.
        let packed = attestation_object_with(
            "packed",
            Cbor::Map(vec![(Cbor::Text("sig".into()), Cbor::Bytes(vec![0; 70]))]),
            &auth_data,
        );
        register(&rp, &create_client_data(), &packed).unwrap();

        let text = |key: &str| Cbor::Text(key.into());
        let cases = [
            (
                vec![
                    (text("attStmt"), Cbor::Map(vec![])),
                    (text("authData"), Cbor::Bytes(auth_data.clone())),
                ],
                "`fmt` is missing",
            ),
            (
                vec![
                    (text("fmt"), int(1)),
                    (text("attStmt"), Cbor::Map(vec![])),
                    (text("authData"), Cbor::Bytes(auth_data.clone())),
                ],
                "`fmt` is not a text string",
            ),
            (
                vec![
                    (text("fmt"), text("none")),
                    (text("authData"), Cbor::Bytes(auth_data.clone())),
                ],
                "`attStmt` is missing",
            ),
            (
                vec![
                    (text("fmt"), text("none")),
                    (text("attStmt"), Cbor::Array(vec![])),
                    (text("authData"), Cbor::Bytes(auth_data.clone())),
                ],
                "`attStmt` is not a map",
            ),
            (
                vec![
                    (text("fmt"), text("none")),
                    (text("attStmt"), Cbor::Map(vec![])),
                ],
                "`authData` is missing",
            ),
            (
                vec![
                    (text("fmt"), text("none")),
                    (text("attStmt"), Cbor::Map(vec![])),
                    (text("authData"), text("x")),
                ],
                "`authData` is not a byte string",
            ),
            (
                vec![
                    (text("fmt"), text("none")),
                    (text("fmt"), text("none")),
                    (text("attStmt"), Cbor::Map(vec![])),
                    (text("authData"), Cbor::Bytes(auth_data.clone())),
                ],
                "`fmt` appears more than once",
            ),
        ];
        for (entries, expected) in cases {
            let error =
                register(&rp, &create_client_data(), &encode(&Cbor::Map(entries))).unwrap_err();
            assert!(
                matches!(&error, WebAuthnError::MalformedAttestationObject(message) if message.contains(expected)),
                "{expected}: {error}"
            );
        }
        let mut trailing = attestation_object(&auth_data);
        trailing.push(0);
        assert_refused!(
            register(&rp, &create_client_data(), &trailing),
            WebAuthnError::MalformedAttestationObject(_)
        );
        let error =
            register(&rp, &create_client_data(), &encode(&Cbor::Array(vec![]))).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::MalformedAttestationObject(_)),
            "{error}"
        );
    }

    #[test]
    fn oversized_inputs_are_refused_before_parsing() {
        let rp = relying_party(false);
        let huge = vec![b' '; MAX_INPUT_BYTES + 1];
        let cose_key = TestKey::es256(0x11).cose_key();
        let attestation = registration_with(&cose_key, UP);
        assert_refused!(register(&rp, &huge, &attestation), WebAuthnError::TooLarge { input: "client data JSON", size } if size == MAX_INPUT_BYTES + 1);
        assert_refused!(
            register(&rp, &create_client_data(), &huge),
            WebAuthnError::TooLarge {
                input: "attestation object",
                ..
            }
        );
        assert_refused!(
            assert_with(&rp, &cose_key, &get_client_data(), &huge, &[0; 64]),
            WebAuthnError::TooLarge {
                input: "authenticator data",
                ..
            }
        );
        assert!(matches!(
            client_data_challenge(&huge),
            Err(WebAuthnError::TooLarge { .. })
        ));
    }

    #[test]
    fn counter_advanced_table() {
        for (stored, reported, consistent) in [
            (0, 0, true),
            (5, 6, true),
            (5, 5, false),
            (5, 0, false),
            (0, 3, true),
            (u32::MAX - 1, u32::MAX, true),
            (u32::MAX, u32::MAX, false),
        ] {
            assert_eq!(
                counter_advanced(stored, reported),
                consistent,
                "{stored} -> {reported}"
            );
        }
    }

    #[test]
    fn client_data_challenge_roundtrip() {
        assert_eq!(
            client_data_challenge(&create_client_data()).unwrap(),
            CHALLENGE
        );
        // Padded base64url is accepted as well.
        let challenge = b"a 22-byte challenge...";
        let padded = format!(
            r#"{{"type":"webauthn.get","challenge":"{}","origin":"{ORIGIN}"}}"#,
            URL_SAFE.encode(challenge)
        );
        assert!(padded.contains('='));
        assert_eq!(client_data_challenge(padded.as_bytes()).unwrap(), challenge);
        let rp = relying_party(false);
        let key = TestKey::eddsa(0x22);
        let auth_data = authenticator_data(RP_ID, UP, 1, None);
        let signature = signed_assertion(&key, padded.as_bytes(), &auth_data);
        rp.verify_assertion(
            challenge,
            &key.cose_key(),
            padded.as_bytes(),
            &auth_data,
            &signature,
        )
        .unwrap();

        assert!(matches!(
            client_data_challenge(b"not json"),
            Err(WebAuthnError::MalformedClientData(_))
        ));
    }
}
