//! The current skills in memory, for MCP: `prompts/list` and `prompts/get` on `/mcp` are
//! on the hot path of every client and must not read PostgreSQL each time. The catalog
//! is read whole at start and again after each change announced on
//! [`super::CHANNEL`] (or after the change listener reconnected, when announcements may
//! have been lost); a request always sees one consistent set.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_postgres::GenericClient;

use super::store::{self, SkillInfo};
use crate::db::notify::RefreshError;

/// One current skill and its file.
#[derive(Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Its name, version, description, scopes and hash.
    pub info: SkillInfo,
    /// The `SKILL.md`, byte for byte.
    pub content: String,
}

/// The current skills, by name.
#[derive(Default)]
pub struct SkillCatalog {
    skills: ArcSwap<Vec<Arc<CatalogEntry>>>,
}

impl SkillCatalog {
    /// Reads the skills again with a connection from `pool`; true when they differ from
    /// the ones held.
    pub async fn load(&self, pool: &deadpool_postgres::Pool) -> Result<bool, RefreshError> {
        let client = pool.get().await?;
        Ok(self.refresh(&**client).await?)
    }

    /// Reads the skills again; true when they differ from the ones held.
    pub async fn refresh<C: GenericClient>(
        &self,
        client: &C,
    ) -> Result<bool, tokio_postgres::Error> {
        let mut skills: Vec<Arc<CatalogEntry>> = store::current_with_files(client)
            .await?
            .into_iter()
            .map(|(info, content)| Arc::new(CatalogEntry { info, content }))
            .collect();
        // By bytes, whatever the database's collation: `get` searches in this order.
        skills.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        let changed = **self.skills.load() != skills;
        if changed {
            self.skills.store(Arc::new(skills));
        }
        Ok(changed)
    }

    /// Every current skill, by name.
    pub fn all(&self) -> Arc<Vec<Arc<CatalogEntry>>> {
        self.skills.load_full()
    }

    /// The current skill `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<Arc<CatalogEntry>> {
        let skills = self.skills.load();
        skills
            .binary_search_by(|entry| entry.info.name.as_str().cmp(name))
            .ok()
            .map(|at| skills[at].clone())
    }
}
