//! `warden skill pull --url URL --dir D`: a user's copy of the skills a Warden gives
//! them, as `D/<name>/SKILL.md` — the layout AI clients read skills from (Claude Code:
//! `~/.claude/skills`). Run at login or from a timer; it talks to Warden over HTTP with
//! the user's own token, so each user gets exactly the skills their scopes allow.
//!
//! What it wrote is recorded in `D/.warden-skills.json` (each skill's SHA-256). It only
//! ever touches those skills: a folder of the user's own is never overwritten (a skill
//! of the same name is skipped, with a warning), a skill no longer given is removed only
//! if its file is still what was written, and a file edited by hand is left (with a
//! warning), and a skill folder or file that is a symbolic link is neither written
//! through nor removed. Files are written whole (a fresh temporary file, flushed, then
//! renamed), and the record is saved after every change, so a run that stops half-way
//! leaves it true.

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
    let fetch = async |path: &str| -> Result<Fetched> {
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
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Fetched::Gone);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(1024).collect();
            bail!("GET {url}: {status}: {text}");
        }
        Ok(Fetched::Body(body))
    };

    let Fetched::Body(listing) = fetch("/v1/skills").await? else {
        bail!("{base}/v1/skills: not found (is {base} a Warden?)");
    };
    let listing: Listing =
        serde_json::from_slice(&listing).context("reading the list of skills")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let manifest_path = args.dir.join(MANIFEST);
    let mut manifest: Manifest = match std::fs::read(&manifest_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "reading {} (remove it to start afresh: files it lists are then left as the user's)",
                manifest_path.display()
            )
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(error) => return Err(error).context(format!("reading {}", manifest_path.display())),
    };
    // A name the manifest holds is a path below `dir` only if it is a skill's name.
    let held = manifest.skills.len();
    manifest.skills.retain(|name, _| check_name(name).is_ok());
    let pruned = manifest.skills.len() != held;
    // Saved after every change, so a run that stops half-way (an error, a crash) leaves
    // it describing what is on disk.
    let save = |manifest: &Manifest| -> Result<()> {
        let text = serde_json::to_vec_pretty(manifest).context("writing the manifest")?;
        write_whole(&manifest_path, &text)
    };

    let mut done = Pulled::default();
    for skill in &listing.skills {
        check_name(&skill.name).with_context(|| "a skill name Warden listed".to_owned())?;
        let folder = args.dir.join(&skill.name);
        let file = folder.join(SKILL_FILE);
        if is_link(&folder) || is_link(&file) {
            eprintln!(
                "warning: {} is a symbolic link; skill `{}` is not written through it",
                folder.display(),
                skill.name
            );
            continue;
        }
        let ours = manifest.skills.get(&skill.name).cloned();
        let on_disk = std::fs::read(&file).ok().map(|bytes| sha256_hex(&bytes));
        match (&on_disk, &ours) {
            (Some(disk), Some(wrote)) if *disk == skill.sha256 => {
                // Current (or current again after a run that stopped before recording
                // it): recorded as what was written.
                if *wrote != skill.sha256 {
                    manifest.skills.insert(skill.name.clone(), disk.clone());
                    save(&manifest)?;
                }
                done.unchanged += 1;
                continue;
            }
            (Some(disk), wrote) if wrote.as_ref() != Some(disk) => {
                let why = if wrote.is_none() {
                    "is not one `warden skill pull` wrote (move it away to have the skill written)"
                } else {
                    "was edited by hand (remove it to have the skill written again)"
                };
                eprintln!(
                    "warning: {} {why}; skill `{}` is not written over it",
                    file.display(),
                    skill.name
                );
                continue;
            }
            _ => {}
        }
        let content = match fetch(&format!("/v1/skills/{}", skill.name)).await? {
            Fetched::Body(content) => content,
            Fetched::Gone => {
                eprintln!("warning: skill `{}` went away while pulling", skill.name);
                continue;
            }
        };
        let sha = sha256_hex(&content);
        if sha != skill.sha256 {
            eprintln!(
                "warning: skill `{}` changed while pulling (or was altered on the way); written as fetched",
                skill.name
            );
        }
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        write_whole(&file, &content)?;
        if on_disk.is_some() || ours.is_some() {
            done.updated.push(skill.name.clone());
        } else {
            done.created.push(skill.name.clone());
        }
        manifest.skills.insert(skill.name.clone(), sha);
        save(&manifest)?;
    }

    let listed: std::collections::BTreeSet<&str> =
        listing.skills.iter().map(|s| s.name.as_str()).collect();
    let gone: Vec<String> = manifest
        .skills
        .keys()
        .filter(|name| !listed.contains(name.as_str()))
        .cloned()
        .collect();
    for name in gone {
        let folder = args.dir.join(&name);
        let file = folder.join(SKILL_FILE);
        let wrote = manifest.skills.remove(&name);
        if is_link(&folder) || is_link(&file) {
            eprintln!(
                "warning: {} is a symbolic link; it stays though skill `{name}` is no longer given to you",
                folder.display()
            );
        } else {
            match std::fs::read(&file).ok().map(|bytes| sha256_hex(&bytes)) {
                None => {}
                Some(disk) if Some(&disk) == wrote.as_ref() => {
                    std::fs::remove_file(&file)
                        .with_context(|| format!("removing {}", file.display()))?;
                    // Only when empty: anything else there is the user's.
                    let _ = std::fs::remove_dir(&folder);
                    done.removed.push(name.clone());
                }
                Some(_) => eprintln!(
                    "warning: {} was edited by hand; it stays though skill `{name}` is no longer given to you",
                    file.display()
                ),
            }
        }
        save(&manifest)?;
    }
    // Every change above was saved as it was made; what is left is names dropped unread.
    if pruned {
        save(&manifest)?;
    }

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

/// An answer of Warden's.
enum Fetched {
    Body(Vec<u8>),
    /// 404: no such skill (any more) for this token.
    Gone,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink())
}

/// Writes `path` whole: a new temporary file beside it (a fresh name, created
/// exclusively, so no existing file or link is written through), flushed to disk, then
/// renamed over `path`. The temporary file is removed if anything fails.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}
