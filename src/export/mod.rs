//! `warden export --dir D` and `warden import --dir D`: the state Warden keeps in
//! PostgreSQL besides the audit trail — identities, OAuth clients, secrets (names only),
//! approved tool definitions, skills — as one Markdown file with YAML frontmatter per item, so
//! a compliance team can keep it in git and review every change as a diff.
//!
//! Export is byte-stable: the same state writes the same bytes (fields in a fixed order,
//! lists sorted, timestamps in UTC to the second, nothing about the export itself), a
//! file whose content did not change is not rewritten, and a file of an item that no
//! longer exists is removed. Only `.md` files under the five folders Warden writes are
//! ever touched.
//!
//! Skills are written as `skills/<name>/SKILL.md`, each the file as it was uploaded.
//!
//! Import applies what a review may change: each identity's `disabled`, the `roles` of
//! local users and service accounts (a federated identity's roles come from its issuer
//! at every login), the approval of a tool definition withheld since it changed (the
//! file's `approved_hash` set to its `pending_hash`), and each skill whose `SKILL.md`
//! differs from its current version (stored as the next one). An identity missing from the
//! database is created without a password (`warden user passwd` sets one). Nothing is
//! deleted unless `--prune` asks (then local identities with no file are disabled, skills
//! with no folder removed), and clients and secrets are read-only here: clients register themselves,
//! secrets change with `warden secret`. Running instances hear of each change
//! (`store::notify`, `NOTIFY warden_pins`), as they do from `warden user`.

pub mod document;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};
use thiserror::Error;
use tokio_postgres::GenericClient;

use crate::auth::store::{self, StoreError};
use crate::config::yaml::frontmatter;
use document::{Document, file_name};

/// The folders export writes, one per kind of item.
pub const FOLDERS: [&str; 5] = ["users", "clients", "secrets", "tools", "skills"];

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What an export did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Exported {
    pub written: usize,
    pub unchanged: usize,
    pub removed: usize,
}

use crate::db::utc_seconds as ts;

/// Writes every item under `dir`, and removes the files of items that are gone.
pub async fn export<C: GenericClient>(client: &C, dir: &Path) -> Result<Exported, ExportError> {
    let mut documents = users(client).await?;
    documents.extend(clients(client).await?);
    documents.extend(secrets(client).await?);
    documents.extend(tools(client).await?);
    let mut files: Vec<(PathBuf, String)> = documents
        .into_iter()
        .map(|(path, document)| (path, document.render()))
        .collect();
    files.extend(skills(client).await?);

    let mut done = Exported::default();
    let mut kept = BTreeSet::new();
    // Nothing is written through a symbolic link (it could lead out of `dir`): every
    // folder on the way is looked at once, and each file.
    let mut plain_folders = BTreeSet::new();
    for (relative, text) in files {
        let path = dir.join(&relative);
        let mut within = dir.to_path_buf();
        for part in relative.parent().into_iter().flat_map(Path::iter) {
            within.push(part);
            if plain_folders.insert(within.clone()) {
                refuse_link(&within)?;
            }
        }
        refuse_link(&path)?;
        kept.insert(path.clone());
        if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            done.unchanged += 1;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        done.written += 1;
    }
    // Export writes `.md` files, and in a skill's folder only its `SKILL.md`: whatever
    // else is there (import refuses it) is not export's to remove.
    let markdown = |path: &Path| path.extension().is_some_and(|e| e == "md");
    let skill_file = |path: &Path| path.file_name().is_some_and(|n| n == SKILL_FILE);
    for folder in FOLDERS {
        let ours: &dyn Fn(&Path) -> bool = if folder == "skills" {
            &skill_file
        } else {
            &markdown
        };
        done.removed += remove_stale(&dir.join(folder), &kept, ours)?;
    }
    Ok(done)
}

/// Where an item of `folder` named `name` is written.
fn item_path(folder: &str, name: &str) -> PathBuf {
    Path::new(folder).join(file_name(name))
}

/// Where a tool's pin is written: a folder per server.
fn tool_path(server: &str, tool: &str) -> PathBuf {
    let folder = file_name(server);
    let folder = folder.strip_suffix(".md").unwrap_or(&folder);
    Path::new("tools").join(folder).join(file_name(tool))
}

/// Where a skill is written: `skills/<name>/SKILL.md`, the layout AI clients read
/// skills from (a skill's name is safe as a folder name).
fn skill_path(name: &str) -> PathBuf {
    Path::new("skills").join(name).join(SKILL_FILE)
}

/// A skill's file in its folder.
const SKILL_FILE: &str = "SKILL.md";

/// Every current skill, its file as stored (byte for byte).
async fn skills<C: GenericClient>(client: &C) -> Result<Vec<(PathBuf, String)>, ExportError> {
    let mut files = Vec::new();
    for (skill, content) in crate::skills::store::current_with_files(client).await? {
        let name = skill.name;
        // The table checks names too; a path is built from this one.
        crate::skills::check_name(&name).map_err(|e| ExportError::Invalid {
            path: PathBuf::from("skills"),
            message: e.to_string(),
        })?;
        files.push((skill_path(&name), content));
    }
    Ok(files)
}

/// Refuses a path that is a symbolic link (a missing one is fine: it will be created).
fn refuse_link(path: &Path) -> Result<(), ExportError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(ExportError::Invalid {
            path: path.to_owned(),
            message: "is a symbolic link; export writes only plain files and folders".into(),
        }),
        _ => Ok(()),
    }
}

/// Removes the files under `folder` that are `ours` and not in `kept` (and folders left
/// empty); returns how many files went.
fn remove_stale(
    folder: &Path,
    kept: &BTreeSet<PathBuf>,
    ours: &dyn Fn(&Path) -> bool,
) -> Result<usize, ExportError> {
    let mut removed = 0;
    for (path, kind) in entries(folder)? {
        if kind.is_dir() {
            removed += remove_stale(&path, kept, ours)?;
            // Only succeeds when the folder is empty, which is the point.
            let _ = std::fs::remove_dir(&path);
        } else if kind.is_file() && ours(&path) && !kept.contains(&path) {
            std::fs::remove_file(&path).map_err(io(&path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

async fn users<C: GenericClient>(client: &C) -> Result<Vec<(PathBuf, Document)>, ExportError> {
    let rows = client
        .query(
            &format!(
                "SELECT i.name, i.kind, i.roles, i.disabled, i.issuer, i.external_subject, \
                 {created}, coalesce(( \
                   SELECT json_agg(json_build_object('prefix', k.prefix, 'scopes', k.scopes, \
                     'created_at', {key_created}, 'expires_at', {key_expires}, \
                     'revoked_at', {key_revoked}) ORDER BY k.created_at, k.prefix) \
                   FROM api_keys k WHERE k.identity_id = i.id), '[]'::json) \
                 FROM identities i ORDER BY i.name",
                created = ts("i.created_at"),
                key_created = ts("k.created_at"),
                key_expires = ts("k.expires_at"),
                key_revoked = ts("k.revoked_at"),
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            let kind: String = row.get(1);
            let mut roles: Vec<String> = row.get(2);
            roles.sort();
            let mut fields = vec![
                ("name", json!(name)),
                ("kind", json!(kind)),
                ("roles", json!(roles)),
                ("disabled", json!(row.get::<_, bool>(3))),
            ];
            if kind == "federated" {
                fields.push(("issuer", json!(row.get::<_, Option<String>>(4))));
                fields.push(("subject", json!(row.get::<_, Option<String>>(5))));
            }
            fields.push(("created_at", json!(row.get::<_, String>(6))));
            fields.push(("api_keys", row.get::<_, Value>(7)));
            let note = if kind == "federated" {
                "Federated identity: `disabled` is applied by `warden import`; its roles come from its issuer at every login."
            } else {
                "`roles` and `disabled` are applied by `warden import`; the rest is for reading."
            };
            let body = format!("# {}\n\n{note}\n", title(&name));
            (item_path("users", &name), Document { fields, body })
        })
        .collect())
}

async fn clients<C: GenericClient>(client: &C) -> Result<Vec<(PathBuf, Document)>, ExportError> {
    let rows = client
        .query(
            &format!(
                "SELECT client_id, client_name, redirect_uris, grant_types, \
                 token_endpoint_auth_method, scope, {} FROM oauth_clients ORDER BY client_id",
                ts("created_at")
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let id: String = row.get(0);
            let mut redirect_uris: Vec<String> = row.get(2);
            redirect_uris.sort();
            let mut grant_types: Vec<String> = row.get(3);
            grant_types.sort();
            let fields = vec![
                ("client_id", json!(id)),
                ("client_name", json!(row.get::<_, Option<String>>(1))),
                ("redirect_uris", json!(redirect_uris)),
                ("grant_types", json!(grant_types)),
                ("token_endpoint_auth_method", json!(row.get::<_, String>(4))),
                ("scope", json!(row.get::<_, Option<String>>(5))),
                ("created_at", json!(row.get::<_, String>(6))),
            ];
            // The name is the client's own (open registration): only in the frontmatter.
            let body = format!(
                "# {}\n\nAn OAuth client registered with Warden (read-only here).\n",
                title(&id)
            );
            (item_path("clients", &id), Document { fields, body })
        })
        .collect())
}

/// Secrets by name: which exist and for whom, never a value.
async fn secrets<C: GenericClient>(client: &C) -> Result<Vec<(PathBuf, Document)>, ExportError> {
    let rows = client
        .query(
            &format!(
                "SELECT name, json_agg(json_build_object('owner', nullif(owner, ''), \
                 'created_at', {created}, 'updated_at', {updated}) ORDER BY owner) \
                 FROM secrets GROUP BY name ORDER BY name",
                created = ts("created_at"),
                updated = ts("updated_at"),
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            let fields = vec![("name", json!(name)), ("values", row.get::<_, Value>(1))];
            let body = format!(
                "# {}\n\nA secret in Warden's encrypted store: who has a value and since when, never the value (read-only here; `warden secret`).\n",
                title(&name)
            );
            (item_path("secrets", &name), Document { fields, body })
        })
        .collect())
}

/// Approved tool definitions, and a definition waiting for approval.
async fn tools<C: GenericClient>(client: &C) -> Result<Vec<(PathBuf, Document)>, ExportError> {
    let rows = client
        .query(
            &format!(
                "SELECT server_name, tool_name, approved_hash, approved_definition, \
                 pending_hash, pending_definition, {first_seen}, {approved}, {changed} \
                 FROM tool_pins ORDER BY server_name, tool_name",
                first_seen = ts("first_seen_at"),
                approved = ts("approved_at"),
                changed = ts("changed_at"),
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let server: String = row.get(0);
            let tool: String = row.get(1);
            let pending: Option<Value> = row.get(5);
            let fields = vec![
                ("server", json!(server)),
                ("tool", json!(tool)),
                ("approved_hash", json!(row.get::<_, String>(2))),
                ("pending_hash", json!(row.get::<_, Option<String>>(4))),
                ("first_seen_at", json!(row.get::<_, String>(6))),
                ("approved_at", json!(row.get::<_, String>(7))),
                ("changed_at", json!(row.get::<_, Option<String>>(8))),
            ];
            let mut body = format!(
                "# {} / {}\n\n## Approved definition\n\n{}",
                title(&server),
                title(&tool),
                json_block(&row.get::<_, Value>(3))
            );
            if let Some(pending) = pending {
                body.push_str(&format!(
                    "\n## Changed definition, withheld until approved\n\n{}",
                    json_block(&pending)
                ));
            }
            (tool_path(&server, &tool), Document { fields, body })
        })
        .collect())
}

/// A name as a heading shows it: as it is when it holds only plain characters, else
/// quoted as JSON, so a name an upstream or a client chose cannot add lines or markup
/// to what a reviewer reads.
fn title(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '@' | ':' | '/' | '|'));
    if plain && !name.is_empty() && !name.starts_with(' ') {
        name.to_owned()
    } else {
        serde_json::Value::from(name).to_string()
    }
}

fn json_block(value: &Value) -> String {
    // A `Value` always serialises; the fallback is never taken.
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    format!("```json\n{text}\n```\n")
}

/// What `import` reads from a file under `users/`.
#[derive(Debug, Deserialize)]
struct UserFile {
    name: String,
    kind: String,
    roles: Vec<String>,
    disabled: bool,
}

/// One change an import made (or, dry, would make).
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Created {
        name: String,
        kind: String,
        roles: Vec<String>,
    },
    Roles {
        name: String,
        roles: Vec<String>,
    },
    Disabled {
        name: String,
        disabled: bool,
    },
    /// `--prune`: a user or service account with no file under `users/` is disabled
    /// (never deleted: its rows in the audit trail and its API keys keep naming it).
    Pruned {
        name: String,
    },
    /// `--prune`: a skill with no folder under `skills/` is removed (what removing it
    /// did, once applied: the removal's version and the hash of the file removed).
    SkillRemoved {
        name: String,
        removed: Option<(i32, String)>,
    },
    /// A skill's file differs from its current version (or it has none): stored as its
    /// next version (what storing it did, once applied).
    Skill {
        skill: crate::skills::Skill,
        created: bool,
        stored: Option<crate::skills::store::Put>,
    },
    /// The definition withheld since it changed is approved (its hash; the definition
    /// itself once applied, for the audit trail).
    Approved {
        server: String,
        tool: String,
        hash: String,
        definition: Option<Value>,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Created { name, kind, .. } => {
                write!(f, "{kind} `{name}` created (no password)")
            }
            Change::Roles { name, roles } => {
                write!(f, "roles of `{name}` set to [{}]", roles.join(", "))
            }
            Change::Disabled { name, disabled } => {
                write!(
                    f,
                    "`{name}` {}",
                    if *disabled { "disabled" } else { "enabled" }
                )
            }
            Change::Pruned { name } => {
                write!(
                    f,
                    "`{name}` disabled: it has no file under users/ (--prune)"
                )
            }
            Change::SkillRemoved { name, .. } => {
                write!(
                    f,
                    "skill `{name}` removed: it has no folder under skills/ (--prune)"
                )
            }
            Change::Skill { skill, created, .. } => {
                let sha256 = hex::encode(skill.sha256());
                let what = if *created { "created" } else { "updated" };
                write!(f, "skill `{}` {what} (sha256 {sha256})", skill.name)
            }
            Change::Approved {
                server, tool, hash, ..
            } => {
                write!(
                    f,
                    "the changed definition of `{server}`/`{tool}` approved ({hash})"
                )
            }
        }
    }
}

/// How `import` applies a folder.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportMode {
    /// Return the changes, make none.
    pub dry_run: bool,
    /// Also undo what has no file: disable users and service accounts, remove skills.
    pub prune: bool,
}

/// Reads `dir/users/*.md`, `dir/tools/*/*.md` and `dir/skills/*/SKILL.md` and applies
/// them: every file is read and checked before anything changes, so one bad file changes
/// nothing. `known_role` says whether the profile defines a role.
pub async fn import<C: GenericClient>(
    client: &C,
    dir: &Path,
    known_role: &dyn Fn(&str) -> bool,
    mode: ImportMode,
) -> Result<Vec<Change>, ExportError> {
    let wanted = read_users(&dir.join("users"))?;
    if mode.prune && wanted.is_empty() {
        // Every export writes a file per identity, and there is at least the first
        // admin: no file means the wrong folder, which would disable everyone.
        return Err(ExportError::Invalid {
            path: dir.join("users"),
            message: "holds no identity file; --prune needs the folder an export wrote \
                      (pruning this one would disable every identity)"
                .into(),
        });
    }
    let current: std::collections::HashMap<String, store::IdentityRow> = store::list(client)
        .await?
        .into_iter()
        .map(|row| (row.name.clone(), row))
        .collect();
    let mut changes = Vec::new();
    for (path, user) in &wanted {
        let mut roles = user.roles.clone();
        roles.sort();
        // Only a role being given needs to exist in the profile: a file left as it was
        // still imports after a role it names was removed from the profile.
        let held: &[String] = current.get(&user.name).map_or(&[], |row| &row.roles);
        if user.kind != "federated"
            && let Some(role) = roles
                .iter()
                .find(|role| !held.contains(role) && !known_role(role))
        {
            return Err(ExportError::Invalid {
                path: path.clone(),
                message: format!("roles: `{role}` is not a role of the profile (`roles:`)"),
            });
        }
        match current.get(&user.name) {
            None if user.kind == "federated" => {
                return Err(ExportError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "federated identity `{}` is not in the database; it is created at its first login",
                        user.name
                    ),
                });
            }
            None => {
                changes.push(Change::Created {
                    name: user.name.clone(),
                    kind: user.kind.clone(),
                    roles: roles.clone(),
                });
                if user.disabled {
                    changes.push(Change::Disabled {
                        name: user.name.clone(),
                        disabled: true,
                    });
                }
            }
            Some(row) if row.kind != user.kind => {
                return Err(ExportError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "`{}` is a {} in the database, not a {}",
                        user.name, row.kind, user.kind
                    ),
                });
            }
            Some(row) => {
                let mut had = row.roles.clone();
                had.sort();
                if had != roles && row.kind != "federated" {
                    changes.push(Change::Roles {
                        name: user.name.clone(),
                        roles: roles.clone(),
                    });
                }
                if row.disabled != user.disabled {
                    changes.push(Change::Disabled {
                        name: user.name.clone(),
                        disabled: user.disabled,
                    });
                }
            }
        }
    }
    if mode.prune {
        let named: std::collections::HashSet<&str> =
            wanted.iter().map(|(_, user)| user.name.as_str()).collect();
        let mut unnamed: Vec<&store::IdentityRow> = current
            .values()
            // Federated identities are their issuer's to manage, created at each one's
            // first login: a folder exported before that does not unmake them. The
            // bootstrap admin is disabled only on purpose (`warden user disable admin`).
            .filter(|row| row.kind != "federated" && !row.disabled)
            .filter(|row| row.name != crate::auth::bootstrap::ACCOUNT)
            .filter(|row| !named.contains(row.name.as_str()))
            .collect();
        // On a case-insensitive file system `Bob` and `bob` share a file: one of them
        // would be pruned for the other's.
        if let Some(row) = unnamed.iter().find(|row| {
            named
                .iter()
                .any(|name| name.eq_ignore_ascii_case(&row.name))
        }) {
            return Err(ExportError::Invalid {
                path: dir.join("users"),
                message: format!(
                    "has no file for `{}` but one for a name differing only in case; the \
                     folder went through a case-insensitive file system, which keeps one \
                     of the two: prune from an export on a case-sensitive one",
                    row.name
                ),
            });
        }
        unnamed.sort_by(|a, b| a.name.cmp(&b.name));
        changes.extend(unnamed.into_iter().map(|row| Change::Pruned {
            name: row.name.clone(),
        }));
    }
    changes.extend(approvals(client, &dir.join("tools")).await?);
    changes.extend(skill_changes(client, &dir.join("skills"), mode.prune).await?);
    if mode.dry_run {
        return Ok(changes);
    }
    for change in &mut changes {
        apply(client, change).await?;
    }
    Ok(changes)
}

/// What `import` reads from a file under `tools/`.
#[derive(Debug, Deserialize)]
struct ToolFile {
    server: String,
    tool: String,
    approved_hash: String,
    pending_hash: Option<String>,
}

/// The approvals the files under `tools/` ask for. A file asks for one when its
/// `approved_hash` was set to its own `pending_hash` (the reviewer's edit); it is
/// granted when that is still the definition withheld, and stops the import when it is
/// not (the definition changed again, or was approved otherwise, since the export).
/// Every other file asks for nothing, however old it is.
async fn approvals<C: GenericClient>(
    client: &C,
    folder: &Path,
) -> Result<Vec<Change>, ExportError> {
    let mut paths = Vec::new();
    for (server, kind) in entries(folder)? {
        if kind.is_dir() {
            paths.extend(markdown_files(&server)?);
        }
    }
    paths.sort();
    let mut changes = Vec::new();
    let mut seen = BTreeSet::new();
    for path in paths {
        let invalid = |message: String| ExportError::Invalid {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let file: ToolFile = frontmatter(&text).map_err(invalid)?;
        if !seen.insert((file.server.clone(), file.tool.clone())) {
            return Err(invalid(format!(
                "`{}`/`{}` is described by another file too",
                file.server, file.tool
            )));
        }
        if file.pending_hash.as_deref() != Some(file.approved_hash.as_str()) {
            continue;
        }
        let row = client
            .query_opt(
                "SELECT approved_hash, pending_hash FROM tool_pins WHERE server_name = $1 AND tool_name = $2",
                &[&file.server, &file.tool],
            )
            .await?
            .ok_or_else(|| {
                invalid(format!(
                    "no pinned tool `{}` of `{}` in the database",
                    file.tool, file.server
                ))
            })?;
        let approved: String = row.get(0);
        let pending: Option<String> = row.get(1);
        if file.approved_hash == approved {
            continue;
        }
        if pending.as_deref() != Some(file.approved_hash.as_str()) {
            return Err(invalid(
                "approved_hash names a definition that is no longer the one awaiting \
                 approval; export again and review the current one"
                    .into(),
            ));
        }
        changes.push(Change::Approved {
            server: file.server,
            tool: file.tool,
            hash: file.approved_hash,
            definition: None,
        });
    }
    Ok(changes)
}

/// The skills under `folder` (`<name>/SKILL.md` each) whose file is not their current
/// version. Anything else there is refused: Warden distributes single-file skills, and
/// a file next to a `SKILL.md` would look reviewed and distributed while it is neither.
async fn skill_changes<C: GenericClient>(
    client: &C,
    folder: &Path,
    prune: bool,
) -> Result<Vec<Change>, ExportError> {
    let current: std::collections::HashMap<String, String> = crate::skills::store::current(client)
        .await?
        .into_iter()
        .map(|skill| (skill.name, skill.sha256))
        .collect();
    let mut listing = entries(folder)?;
    listing.sort_by(|a, b| a.0.cmp(&b.0));
    let mut changes = Vec::new();
    // The skills the folder holds, for `prune` (every entry is checked to be one below).
    let present: std::collections::HashSet<String> = listing
        .iter()
        .filter_map(|(path, _)| path.file_name()?.to_str().map(str::to_owned))
        .collect();
    for (path, kind) in listing {
        let invalid = |path: &Path, message: String| ExportError::Invalid {
            path: path.to_owned(),
            message,
        };
        if !kind.is_dir() {
            return Err(invalid(
                &path,
                "expected a folder per skill holding its SKILL.md".into(),
            ));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        crate::skills::check_name(&name).map_err(|e| invalid(&path, e.to_string()))?;
        for (inside, _) in entries(&path)? {
            if inside.file_name().is_none_or(|n| n != SKILL_FILE) {
                return Err(invalid(
                    &inside,
                    format!("only {SKILL_FILE} is imported: Warden distributes single-file skills"),
                ));
            }
        }
        let file = path.join(SKILL_FILE);
        let text = std::fs::read_to_string(&file).map_err(io(&file))?;
        let skill = crate::skills::Skill::parse_named(text, &name)
            .map_err(|e| invalid(&file, e.to_string()))?;
        let sha256 = skill.sha256();
        let previous = current.get(&name);
        if previous.is_some_and(|sha| *sha == hex::encode(sha256)) {
            continue;
        }
        // An older version, unchanged: the folder is behind what the admin API did since
        // it was exported, and applying it would quietly undo that.
        if let Some(old) = crate::skills::store::version_with(client, &name, &sha256).await? {
            return Err(invalid(
                &file,
                format!(
                    "is version {old} of skill `{name}`, which has changed or been removed since; \
                     export again (or upload it with PUT /admin/skills/{name} to go back to it)"
                ),
            ));
        }
        changes.push(Change::Skill {
            skill,
            created: previous.is_none(),
            stored: None,
        });
    }
    // Without `skills/` the folder says nothing about skills (an export writes it only
    // when there are some, and git keeps no empty folder).
    if prune && folder.is_dir() {
        let mut gone: Vec<&String> = current
            .keys()
            .filter(|name| !present.contains(name.as_str()))
            .collect();
        gone.sort();
        changes.extend(gone.into_iter().map(|name| Change::SkillRemoved {
            name: name.clone(),
            removed: None,
        }));
    }
    Ok(changes)
}

/// The `.md` files directly in `folder` (none when it is missing).
fn markdown_files(folder: &Path) -> Result<Vec<PathBuf>, ExportError> {
    Ok(entries(folder)?
        .into_iter()
        .filter(|(path, kind)| kind.is_file() && path.extension().is_some_and(|e| e == "md"))
        .map(|(path, _)| path)
        .collect())
}

/// What `folder` holds (nothing when it is missing). A symbolic link, the folder itself
/// or one in it, is refused: export would write or delete through it, and import would
/// read what was not reviewed where it lies.
fn entries(folder: &Path) -> Result<Vec<(PathBuf, std::fs::FileType)>, ExportError> {
    refuse_link(folder)?;
    let listing = match std::fs::read_dir(folder) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io(folder)(error)),
    };
    let mut found = Vec::new();
    for entry in listing {
        let entry = entry.map_err(io(folder))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_symlink() {
            refuse_link(&path)?;
        }
        found.push((path, kind));
    }
    Ok(found)
}

impl Change {
    /// An identity change's notice (kind, subject, detail): what running servers hear
    /// and what the audit trail records.
    pub fn identity_notice(&self) -> Option<(&'static str, &str, Value)> {
        match self {
            Change::Created { name, roles, .. } => Some((
                "user.added",
                name,
                json!({"origin": "import", "roles": roles}),
            )),
            Change::Roles { name, roles } => Some((
                "user.roles_changed",
                name,
                json!({"origin": "import", "roles": roles}),
            )),
            Change::Disabled { name, disabled } => Some((
                if *disabled {
                    "user.disabled"
                } else {
                    "user.enabled"
                },
                name,
                json!({"origin": "import"}),
            )),
            Change::Pruned { name } => Some((
                "user.disabled",
                name,
                json!({"origin": "import", "pruned": true}),
            )),
            Change::Skill { .. } | Change::SkillRemoved { .. } | Change::Approved { .. } => None,
        }
    }
}

async fn apply<C: GenericClient>(client: &C, change: &mut Change) -> Result<(), ExportError> {
    // Running servers drop what they cached of the identity when the import commits;
    // the trail records the change once (`cli/export.rs`).
    if let Some((kind, name, detail)) = change.identity_notice() {
        store::notify(client, kind, name, detail).await?;
    }
    match change {
        Change::Created { name, kind, roles } => {
            store::create(client, name, kind, roles, None).await?;
        }
        Change::Roles { name, roles } => {
            store::set_roles(client, name, roles).await?;
        }
        Change::Disabled { name, disabled } => {
            store::set_disabled(client, name, *disabled).await?;
        }
        Change::Pruned { name } => {
            store::set_disabled(client, name, true).await?;
        }
        Change::SkillRemoved { name, removed } => {
            *removed =
                crate::skills::store::remove(client, name, &crate::audit::cli_actor()).await?;
        }
        Change::Skill { skill, stored, .. } => {
            *stored =
                Some(crate::skills::store::put(client, skill, &crate::audit::cli_actor()).await?);
        }
        Change::Approved {
            server,
            tool,
            hash,
            definition,
        } => {
            let updated = client
                .query(
                    "UPDATE tool_pins SET approved_hash = pending_hash, approved_definition = pending_definition, \
                     pending_hash = NULL, pending_definition = NULL, approved_at = now() \
                     WHERE server_name = $1 AND tool_name = $2 AND pending_hash = $3 \
                     RETURNING approved_definition",
                    &[&*server, &*tool, &*hash],
                )
                .await?;
            // A replica may have stored another change since the check: then nothing
            // was approved, and the whole import is undone rather than reported done.
            let [row] = updated.as_slice() else {
                return Err(ExportError::Invalid {
                    path: tool_path(server, tool),
                    message: "the definition awaiting approval changed while importing; export again and review the current one".into(),
                });
            };
            *definition = Some(row.get(0));
            // Every running replica reads its pins again and serves the tool.
            let payload = json!({"server": server, "tool": tool, "origin": "import"}).to_string();
            client
                .execute(
                    "SELECT pg_notify($1, $2)",
                    &[&crate::gateway::pins::CHANNEL, &payload],
                )
                .await?;
        }
    }
    Ok(())
}

/// Every `*.md` file in `folder`, read and checked, in name order.
fn read_users(folder: &Path) -> Result<Vec<(PathBuf, UserFile)>, ExportError> {
    let mut paths = markdown_files(folder)?;
    paths.sort();
    let mut users = Vec::with_capacity(paths.len());
    let mut names = BTreeSet::new();
    for path in paths {
        let invalid = |message: String| ExportError::Invalid {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let user: UserFile = frontmatter(&text).map_err(invalid)?;
        if !matches!(user.kind.as_str(), "user" | "service" | "federated") {
            return Err(invalid(format!(
                "kind: expected user, service or federated, found `{}`",
                user.kind
            )));
        }
        if user.kind != "federated" {
            store::check_name(&user.name).map_err(|e| invalid(e.to_string()))?;
        }
        if !names.insert(user.name.clone()) {
            return Err(invalid(format!(
                "`{}` is described by another file too",
                user.name
            )));
        }
        users.push((path, user));
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_show_plain_names_and_quote_the_rest() {
        assert_eq!(title("alice@example.com"), "alice@example.com");
        assert_eq!(title("github"), "github");
        assert_eq!(title("https://issuer|sub-1"), "https://issuer|sub-1");
        assert_eq!(title("evil\n# Approved"), "\"evil\\n# Approved\"");
        assert_eq!(title("*bold*"), "\"*bold*\"");
        assert_eq!(title(""), "\"\"");
    }
}
