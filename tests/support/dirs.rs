//! Temporary directories. Everything one test binary writes lives under a single root,
//! `$TMPDIR/warden-it-<pid>`: the shared PostgreSQL cluster, each test's profile and
//! state directory. The root is removed when the binary exits (see [`root`]); roots of
//! earlier runs whose process has died are removed before a new root is made.
//!
//! The root and every test directory are mode 0711: run as root, Warden and the harness
//! start PostgreSQL as the `postgres` user, which must be able to traverse down to its
//! data directory. Nothing under the root is secret (throwaway data, test keys).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tempfile::TempDir;

const PREFIX: &str = "warden-it-";

static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// This test binary's root directory, created (and earlier runs' leftovers removed) on
/// first use.
pub fn root() -> &'static Path {
    ROOT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_stale_roots(&tmp);
        let root = tmp.join(format!("{PREFIX}{}", std::process::id()));
        // Left by an earlier process that had our pid: stale as well.
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        open_to_traversal(&root);
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
        root
    })
}

/// A fresh directory under the root, removed when dropped.
pub fn temp_dir(label: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{label}-"))
        .tempdir_in(root())
        .unwrap_or_else(|e| panic!("cannot create a temp dir under {}: {e}", root().display()));
    open_to_traversal(dir.path());
    dir
}

fn open_to_traversal(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dir.display()));
}

/// Removes `warden-it-<pid>` directories whose process is gone. A directory whose
/// PostgreSQL is somehow still running is left alone (it is not ours to stop).
fn remove_stale_roots(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        if !super::procs::with_cmdline_containing(&path.display().to_string()).is_empty() {
            continue;
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// Runs when the test binary exits: stops the shared cluster, then removes the root.
extern "C" fn cleanup_at_exit() {
    super::db::stop_shared_cluster_at_exit();
    if let Some(root) = ROOT.get() {
        let _ = std::fs::remove_dir_all(root);
    }
}
