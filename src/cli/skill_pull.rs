//! `warden skill pull --url URL --dir D`: a user's copy of the skills a Warden gives
//! them, as `D/<name>/SKILL.md` — the layout AI clients read skills from (Claude Code:
//! `~/.claude/skills`). Run at login or from a timer; it talks to Warden over HTTP with
//! the user's own token, so each user gets exactly the skills their scopes allow.
//!
//! What it wrote is recorded in `D/.warden-skills.json` (each skill's SHA-256). It only
//! ever touches those skills: a folder of the user's own is never overwritten (a skill
//! of the same name is skipped, with a warning), a skill no longer given is removed only
//! if its file is still what was written, and a file edited by hand is left (with a
//! warning). Files are written whole (a temporary file, then a rename); nothing is
//! written through a symbolic link.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use warden_actors::upstream::http::{BodyEnd, read_capped};

use super::TokenArg;
use crate::skills::check_name;

/// The largest listing or skill file read (a skill is at most `server.max_body_bytes`,
/// 4 MiB by default).
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// The record of what was written, in the target folder.
const MANIFEST: &str = ".warden-skills.json";
const SKILL_FILE: &str = "SKILL.md";

#[derive(clap::Args)]
pub(crate) struct PullArgs {
    /// Warden's address, e.g. https://warden.example.com.
    #[arg(long)]
    url: String,
    #[command(flatten)]
    token: TokenArg,
    /// The skills folder to keep in step (created when missing), e.g. ~/.claude/skills.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Default, Deserialize, Serialize)]
struct Manifest {
    /// Skill name → hex SHA-256 of the file written.
    skills: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Listing {
    skills: Vec<Listed>,
}

#[derive(Deserialize)]
struct Listed {
    name: String,
    sha256: String,
}

/// What a pull did.
#[derive(Default)]
struct Pulled {
    created: Vec<String>,
    updated: Vec<String>,
    removed: Vec<String>,
    unchanged: usize,
}

pub(crate) async fn pull(args: PullArgs) -> Result<ExitCode> {
    let token = args
        .token
        .load()?
        .context("no token: pass --token-file FILE or set WARDEN_TOKEN")?;
    let client = warden_actors::upstream::http::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let base = args.url.trim_end_matches('/');
    let fetch = async |path: &str| -> Result<Vec<u8>> {
        let url = format!("{base}{path}");
        let mut response = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let (body, end) = read_capped(&mut response, MAX_RESPONSE_BYTES).await;
        match end {
            BodyEnd::Complete => {}
            BodyEnd::TooLarge => {
                bail!("GET {url}: the answer is larger than {MAX_RESPONSE_BYTES} bytes")
            }
            BodyEnd::Broken(error) => bail!("GET {url}: the answer broke off: {error}"),
        }
        if !status.is_success() {
            bail!(
                "GET {url}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(body)
    };

    let listing: Listing = serde_json::from_slice(&fetch("/v1/skills").await?)
        .context("reading the list of skills")?;
    refuse_link(&args.dir)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let manifest_path = args.dir.join(MANIFEST);
    let mut manifest: Manifest = match std::fs::read(&manifest_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", manifest_path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(error) => return Err(error).context(format!("reading {}", manifest_path.display())),
    };

    let mut done = Pulled::default();
    for skill in &listing.skills {
        check_name(&skill.name).with_context(|| "a skill name Warden listed".to_owned())?;
        let folder = args.dir.join(&skill.name);
        let file = folder.join(SKILL_FILE);
        refuse_link(&folder)?;
        refuse_link(&file)?;
        let ours = manifest.skills.get(&skill.name);
        if ours.is_none() && folder.exists() {
            eprintln!(
                "warning: {} is not one `warden skill pull` wrote; skill `{}` is not written there",
                folder.display(),
                skill.name
            );
            continue;
        }
        let on_disk = std::fs::read(&file).ok().map(|bytes| sha256_hex(&bytes));
        if ours == Some(&skill.sha256) && on_disk.as_ref() == Some(&skill.sha256) {
            done.unchanged += 1;
            continue;
        }
        if let (Some(ours), Some(on_disk)) = (ours, &on_disk)
            && ours != on_disk
        {
            eprintln!(
                "warning: {} was edited by hand; skill `{}` is not written over it",
                file.display(),
                skill.name
            );
            continue;
        }
        let content = fetch(&format!("/v1/skills/{}", skill.name)).await?;
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        write_whole(&file, &content)?;
        let sha = sha256_hex(&content);
        if ours.is_some() {
            done.updated.push(skill.name.clone());
        } else {
            done.created.push(skill.name.clone());
        }
        manifest.skills.insert(skill.name.clone(), sha);
    }

    let listed: std::collections::BTreeSet<&str> =
        listing.skills.iter().map(|s| s.name.as_str()).collect();
    // A name the manifest holds is a path below `dir` only if it is a skill's name.
    manifest.skills.retain(|name, _| check_name(name).is_ok());
    let gone: Vec<String> = manifest
        .skills
        .keys()
        .filter(|name| !listed.contains(name.as_str()))
        .cloned()
        .collect();
    for name in gone {
        let folder = args.dir.join(&name);
        let file = folder.join(SKILL_FILE);
        refuse_link(&folder)?;
        let on_disk = std::fs::read(&file).ok().map(|bytes| sha256_hex(&bytes));
        if on_disk.is_some() && on_disk.as_ref() != manifest.skills.get(&name) {
            eprintln!(
                "warning: {} was edited by hand; it stays though skill `{name}` is no longer given to you",
                file.display()
            );
        } else if on_disk.is_some() {
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            // Only when empty: anything else there is the user's.
            let _ = std::fs::remove_dir(&folder);
            done.removed.push(name.clone());
        }
        manifest.skills.remove(&name);
    }
    let text = serde_json::to_vec_pretty(&manifest).context("writing the manifest")?;
    write_whole(&manifest_path, &text)?;

    let list = |names: &[String]| {
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    };
    println!(
        "{}: {} created{}, {} updated{}, {} removed{}, {} unchanged",
        args.dir.display(),
        done.created.len(),
        list(&done.created),
        done.updated.len(),
        list(&done.updated),
        done.removed.len(),
        list(&done.removed),
        done.unchanged
    );
    Ok(ExitCode::SUCCESS)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Refuses a path that is a symbolic link (a missing one is fine).
fn refuse_link(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink()) {
        bail!(
            "{} is a symbolic link; nothing is written through one",
            path.display()
        );
    }
    Ok(())
}

/// Writes `path` whole: a temporary file beside it, then a rename.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("warden-tmp");
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}
