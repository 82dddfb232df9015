//! Skills: reusable instructions for AI clients that Warden distributes, so a platform
//! team ships one reviewed `SKILL.md` to everyone it concerns instead of asking each user
//! to clone a repository.
//!
//! A skill is one Markdown file with YAML frontmatter in the Agent Skills shape: `name`
//! (1–64 lowercase letters, digits and single hyphens), `description` (what it does and
//! when to use it, 1–1024 characters), any other keys the format allows (`license`,
//! `allowed-tools`, `metadata`, …), then the instructions. Warden keeps the file byte
//! for byte and serves it as uploaded. Who may read it is the skill's own
//! `metadata.warden-scopes` (space-separated; a reader needs all of them) or, without
//! one, the profile's `skills.scopes` (default `skills:read`, which the built-in `user`
//! role grants).
//!
//! Every change is a new version in `skill_versions` (schema/0060_skills.sql) and a
//! `skill.changed` row in the audit trail; nothing is overwritten. Changes come through
//! the admin API (`PUT`/`DELETE /admin/skills/{name}`), `warden skill` and `warden
//! import` (the `skills/` folder of an export); readers use `GET /v1/skills` (src/http/skills.rs), or
//! MCP: each skill is a prompt `skill__<name>` on `/mcp`, served from the in-memory
//! [`catalog::SkillCatalog`] that every change announced on [`CHANNEL`] refreshes.

pub mod catalog;
pub mod store;

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::yaml::frontmatter;

/// The PostgreSQL channel skill changes are announced on (the skill's name).
pub const CHANNEL: &str = "warden_skills";

/// The frontmatter key under `metadata` that names the scopes a reader needs.
pub const SCOPES_KEY: &str = "warden-scopes";
/// The longest `name`.
const MAX_NAME: usize = 64;
/// The longest `description`, in characters.
const MAX_DESCRIPTION: usize = 1024;

/// Why a skill file was refused. Each message names the key (and, for YAML problems,
/// the line) at fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SkillError {
    #[error("{0}")]
    Frontmatter(String),
    #[error("`name` is missing from the frontmatter")]
    NoName,
    #[error(
        "`name` `{0}` must be 1 to 64 lowercase letters, digits and hyphens, neither starting nor ending with a hyphen nor holding two in a row"
    )]
    BadName(String),
    #[error("`name` is `{found}` but the skill is addressed as `{expected}`")]
    NameMismatch { expected: String, found: String },
    #[error("`description` is missing from the frontmatter")]
    NoDescription,
    #[error("`description` must be 1 to 1024 characters, found {0}")]
    BadDescription(usize),
    #[error("`metadata.warden-scopes`: `{0}` is not a valid scope (no quotes or backslashes)")]
    BadScope(String),
    #[error("`metadata.warden-scopes` must be a string of space-separated scopes")]
    ScopesNotText,
}

/// A checked skill file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skill {
    pub name: String,
    pub description: String,
    /// `metadata.warden-scopes`, split; empty when the file names none (the profile's
    /// `skills.scopes` then apply).
    pub scopes: Vec<String>,
    /// The file, byte for byte.
    pub content: String,
}

#[derive(Deserialize)]
struct Frontmatter {
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
}

impl Skill {
    /// Reads and checks a `SKILL.md`.
    pub fn parse(content: String) -> Result<Skill, SkillError> {
        let front: Frontmatter = frontmatter(&content).map_err(SkillError::Frontmatter)?;
        let name = front.name.ok_or(SkillError::NoName)?;
        check_name(&name)?;
        let description = front.description.ok_or(SkillError::NoDescription)?;
        let length = description.chars().count();
        if length == 0 || length > MAX_DESCRIPTION {
            return Err(SkillError::BadDescription(length));
        }
        let mut scopes: Vec<String> = match front.metadata.get(SCOPES_KEY) {
            None => Vec::new(),
            Some(serde_json::Value::String(scopes)) => {
                scopes.split_whitespace().map(str::to_owned).collect()
            }
            Some(_) => return Err(SkillError::ScopesNotText),
        };
        if let Some(bad) = scopes.iter().find(|s| s.contains(['"', '\\'])) {
            return Err(SkillError::BadScope(bad.clone()));
        }
        scopes.sort();
        scopes.dedup();
        Ok(Skill {
            name,
            description,
            scopes,
            content,
        })
    }

    /// Reads a `SKILL.md` that must be the skill named `expected`.
    pub fn parse_named(content: String, expected: &str) -> Result<Skill, SkillError> {
        let skill = Skill::parse(content)?;
        if skill.name != expected {
            return Err(SkillError::NameMismatch {
                expected: expected.to_owned(),
                found: skill.name,
            });
        }
        Ok(skill)
    }

    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.content.as_bytes()).into()
    }
}

/// Whether `principal` may read `skill` (the one check of every route to a skill: the
/// HTTP routes, its listing, its prompt).
pub fn may_read(
    policy: &crate::policy::PolicyEngine,
    principal: &crate::auth::Principal,
    skill: &store::SkillInfo,
) -> Result<(), crate::policy::Denial> {
    let read = crate::policy::Permission::ReadSkill {
        name: &skill.name,
        scopes: &skill.scopes,
    };
    policy.check(principal, &read)
}

/// What a change did to a skill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkillAction {
    Created,
    Updated,
    Removed,
}

impl SkillAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SkillAction::Created => "created",
            SkillAction::Updated => "updated",
            SkillAction::Removed => "removed",
        }
    }
}

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The admin API.
    Admin,
    /// `warden import`.
    Import,
    /// `warden skill`.
    Cli,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Admin => "admin",
            Origin::Import => "import",
            Origin::Cli => "cli",
        }
    }
}

/// One change to a skill, as its `skill.changed` audit row records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkillChange<'a> {
    pub name: &'a str,
    pub action: SkillAction,
    pub version: i32,
    /// Hex SHA-256 of the file now (none for a removal) and of the one before.
    pub sha256: Option<String>,
    pub previous_sha256: Option<String>,
    pub origin: Origin,
}

impl<'a> SkillChange<'a> {
    /// The removal of skill `name`: `version` is the removal's, `previous` the hex hash
    /// of the file removed.
    pub fn removed(name: &'a str, version: i32, previous: String, origin: Origin) -> Self {
        SkillChange {
            name,
            action: SkillAction::Removed,
            version,
            sha256: None,
            previous_sha256: Some(previous),
            origin,
        }
    }

    /// The change storing `skill` made (`stored`, what [`store::put`] answered), if it
    /// made one.
    pub fn stored(skill: &'a Skill, stored: &store::Put, origin: Origin) -> Option<Self> {
        Some(SkillChange {
            name: &skill.name,
            action: stored.action()?,
            version: stored.version(),
            sha256: Some(hex::encode(skill.sha256())),
            previous_sha256: stored.previous(),
            origin,
        })
    }

    /// The audit row of this change made by `actor` (`actor_kind` `user` or `client`).
    pub fn event(&self, actor_kind: &'static str, actor: &str) -> warden_actors::audit::AuditEvent {
        let mut event = warden_actors::audit::AuditEvent::new("skill.changed", actor_kind);
        event.actor_id = Some(actor.to_owned());
        event.subject = Some(self.name.to_owned());
        event.attributes = serde_json::json!({
            "action": self.action.as_str(),
            "version": self.version,
            "sha256": self.sha256,
            "previous_sha256": self.previous_sha256,
            "origin": self.origin.as_str(),
        });
        event
    }
}

/// A skill name as the Agent Skills format has it: lowercase letters, digits and single
/// hyphens, at most 64, not starting or ending with a hyphen. (Safe as a file and
/// folder name and in a URL path as it is.)
pub fn check_name(name: &str) -> Result<(), SkillError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(SkillError::BadName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(front: &str) -> String {
        format!("---\n{front}---\n# Steps\n\n1. Do the thing.\n")
    }

    #[test]
    fn a_skill_file_is_kept_byte_for_byte_and_its_scopes_read() {
        let text = file(
            "name: pdf-forms\ndescription: Fill in PDF forms.\nlicense: MIT\nmetadata:\n  warden-scopes: \"finance:read  skills:read\"\n  author: platform\n",
        );
        let skill = Skill::parse(text.clone()).unwrap();
        assert_eq!(skill.name, "pdf-forms");
        assert_eq!(skill.description, "Fill in PDF forms.");
        assert_eq!(skill.scopes, ["finance:read", "skills:read"]);
        assert_eq!(skill.content, text);
        let plain = Skill::parse(file("name: a\ndescription: b\n")).unwrap();
        assert!(plain.scopes.is_empty());
    }

    /// The example in docs/skills.md, a description folded over two lines included.
    #[test]
    fn the_documented_example_reads() {
        let text = "---\nname: payroll-checks\ndescription: Run the monthly payroll checks before finance signs off. Use when asked to\n  check, verify or close payroll.\nlicense: Internal\nmetadata:\n  warden-scopes: \"finance:read skills:read\"\n---\n# Payroll checks\n\n1. …\n";
        let skill = Skill::parse(text.into()).unwrap();
        assert_eq!(
            skill.description,
            "Run the monthly payroll checks before finance signs off. Use when asked to check, verify or close payroll."
        );
        assert_eq!(skill.scopes, ["finance:read", "skills:read"]);
    }

    #[test]
    fn names_follow_the_agent_skills_rules() {
        for good in ["a", "pdf-forms", "x1-2", &"a".repeat(64)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "PDF",
            "a_b",
            "a b",
            "../x",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_refusal_names_what_is_wrong() {
        let refuse = |front: &str| Skill::parse(file(front)).unwrap_err();
        assert_eq!(refuse("description: d\n"), SkillError::NoName);
        assert_eq!(refuse("name: a\n"), SkillError::NoDescription);
        assert_eq!(
            refuse("name: a\ndescription: \"\"\n"),
            SkillError::BadDescription(0)
        );
        let long = format!("name: a\ndescription: {}\n", "é".repeat(1025));
        assert_eq!(refuse(&long), SkillError::BadDescription(1025));
        let edge = format!("name: a\ndescription: {}\n", "é".repeat(1024));
        assert!(Skill::parse(file(&edge)).is_ok());
        assert_eq!(
            refuse("name: Bad\ndescription: d\n"),
            SkillError::BadName("Bad".into())
        );
        assert_eq!(
            refuse("name: a\ndescription: d\nmetadata:\n  warden-scopes: 'a\"b'\n"),
            SkillError::BadScope("a\"b".into())
        );
        assert_eq!(
            refuse("name: a\ndescription: d\nmetadata:\n  warden-scopes: [a, b]\n"),
            SkillError::ScopesNotText
        );
        let SkillError::Frontmatter(message) = refuse("name: a\ndescription: d\nmetadata: 5\n")
        else {
            panic!("a YAML problem");
        };
        assert!(message.starts_with("line 4: metadata:"), "{message}");
        assert!(matches!(
            Skill::parse("# no frontmatter\n".into()),
            Err(SkillError::Frontmatter(_))
        ));
        assert_eq!(
            Skill::parse_named(file("name: a\ndescription: d\n"), "b"),
            Err(SkillError::NameMismatch {
                expected: "b".into(),
                found: "a".into()
            })
        );
    }
}
