//! Identity's hot and cold paths, measured with criterion (`cargo bench --bench auth`;
//! figures in docs/benchmarks.md):
//!
//! - `auth/cached_token_and_permission_check`: what every governed call pays once its
//!   token was seen — SHA-256 of the token, the cache lookup, the permission check of a
//!   `tools/call` (target ≤ 2 µs);
//! - `auth/permission_check`: the check alone (it also runs for every tool of a listing);
//! - `auth/verify_uncached/*`: a full signature verification per algorithm — Warden's own
//!   EdDSA tokens, and ES256 / RS256 as federated issuers send them;
//! - `auth/argon2id_verify`: one password check at OWASP parameters.

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use warden::auth::cache::{self, TokenCache};
use warden::auth::keys::KeySet;
use warden::auth::tokens::{self, Grant, unix_now};
use warden::auth::{PrincipalKind, Scopes, passwords};
use warden::config::Config;
use warden::policy::{Permission, PolicyEngine};

const ISS: &str = "https://warden.example.com";

/// A profile with 20 servers, each with read/write scopes and a tool override.
fn profile() -> String {
    let mut text = String::from("servers:\n");
    for i in 0..20 {
        text.push_str(&format!(
            "  s{i}:\n    url: https://example.com/{i}\n    scopes: [s{i}:read]\n    write_scopes: [s{i}:write]\n    tools:\n      admin_tool: {{scopes: [s{i}:admin]}}\n"
        ));
    }
    text
}

/// An openssl-generated key as DER, or None when openssl is not installed.
fn openssl(args: &[&str], convert: Option<&[&str]>) -> Option<Vec<u8>> {
    let key = Command::new("openssl").args(args).output().ok()?;
    if !key.status.success() {
        return None;
    }
    let Some(convert) = convert else {
        return Some(key.stdout);
    };
    let mut child = Command::new("openssl")
        .args(convert)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write as _;
    child.stdin.take()?.write_all(&key.stdout).ok()?;
    let out = child.wait_with_output().ok()?;
    out.status.success().then_some(out.stdout)
}

fn foreign_token(algorithm: Algorithm, encoding: &EncodingKey) -> Option<(String, DecodingKey)> {
    let now = unix_now();
    let claims = json!({"iss": "https://idp.example.com", "sub": "u1", "aud": ISS, "exp": now + 3600, "iat": now, "scope": "s1:read"});
    let mut header = Header::new(algorithm);
    header.kid = Some("k1".into());
    let token = match jsonwebtoken::encode(&header, &claims, encoding) {
        Ok(token) => token,
        Err(error) => {
            eprintln!("skipping {algorithm:?}: cannot sign with the openssl key ({error})");
            return None;
        }
    };
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(encoding, algorithm).ok()?;
    Some((token, DecodingKey::from_jwk(&jwk).ok()?))
}

fn bench(c: &mut Criterion) {
    let config = Config::parse(&profile(), "bench.yaml", &|_| None).expect("profile");
    let policy = PolicyEngine::from_config(&config);
    let keys = KeySet::generate_ephemeral();
    let issued = tokens::issue(
        &keys,
        ISS,
        ISS,
        &Grant {
            subject: "alice".into(),
            client_id: "bench".into(),
            scopes: Scopes::parse("s1:read s1:write s7:read"),
            roles: vec!["user".into()],
            kind: PrincipalKind::User,
            family: None,
            session_epoch: 0,
            api_key: None,
            ttl: Duration::from_secs(3600),
        },
    )
    .expect("issues");
    let token = issued.token.expose().clone();
    let claims = tokens::verify(&token, &keys, ISS, ISS).expect("verifies");
    let principal = Arc::new(tokens::principal(&claims, ISS));
    let cache = TokenCache::new(100_000);
    for i in 0..10_000 {
        cache.insert_unless_changed(
            cache.generation(),
            cache::key(&format!("other-{i}")),
            principal.clone(),
            unix_now() + 3600,
            None,
        );
    }
    cache.insert_unless_changed(
        cache.generation(),
        cache::key(&token),
        principal.clone(),
        unix_now() + 3600,
        None,
    );
    let annotations: Value = json!({"readOnlyHint": false, "destructiveHint": true});
    let call = Permission::CallTool {
        server: "s1",
        tool: "create_issue",
        annotations: Some(&annotations),
    };

    c.bench_function("auth/cached_token_and_permission_check", |b| {
        b.iter(|| {
            let principal = cache.get(&cache::key(black_box(&token))).expect("cached");
            policy.check(&principal, black_box(&call)).expect("allowed");
        })
    });
    c.bench_function("auth/permission_check", |b| {
        b.iter(|| policy.check(black_box(&principal), black_box(&call)))
    });
    c.bench_function("auth/verify_uncached/EdDSA", |b| {
        b.iter(|| tokens::verify(black_box(&token), &keys, ISS, ISS).expect("verifies"))
    });
    let validation = |algorithm| {
        let mut v = Validation::new(algorithm);
        v.set_audience(&[ISS]);
        v
    };
    let ec = openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-outform",
            "DER",
        ],
        Some(&[
            "pkcs8", "-topk8", "-nocrypt", "-inform", "DER", "-outform", "DER",
        ]),
    );
    if let Some(der) = ec
        && let Some((token, key)) = foreign_token(Algorithm::ES256, &EncodingKey::from_ec_der(&der))
    {
        let v = validation(Algorithm::ES256);
        c.bench_function("auth/verify_uncached/ES256", |b| {
            b.iter(|| jsonwebtoken::decode::<Value>(black_box(&token), &key, &v).expect("verifies"))
        });
    }
    let rsa = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-outform",
            "DER",
        ],
        Some(&["rsa", "-inform", "DER", "-outform", "DER", "-traditional"]),
    );
    if let Some(der) = rsa
        && let Some((token, key)) =
            foreign_token(Algorithm::RS256, &EncodingKey::from_rsa_der(&der))
    {
        let v = validation(Algorithm::RS256);
        c.bench_function("auth/verify_uncached/RS256", |b| {
            b.iter(|| jsonwebtoken::decode::<Value>(black_box(&token), &key, &v).expect("verifies"))
        });
    }
    let hash = passwords::hash_blocking(b"correct horse battery").expect("hashes");
    let mut group = c.benchmark_group("auth/argon2id");
    group.sample_size(10);
    group.bench_function("verify", |b| {
        b.iter(|| {
            assert!(passwords::verify_blocking(
                black_box(b"correct horse battery"),
                &hash
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
