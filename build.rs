//! Embeds the numbered SQL files of `schema/` into the binary, in file-name order, and
//! records the git revision for `warden version`.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let schema = Path::new("schema");
    println!("cargo:rerun-if-changed=schema");
    let mut files: Vec<String> = std::fs::read_dir(schema)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.ends_with(".sql"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = String::from("pub(super) const MIGRATIONS: &[(&str, &str)] = &[\n");
    for file in &files {
        let path = std::fs::canonicalize(schema.join(file)).expect("schema file is readable");
        writeln!(
            out,
            "    ({file:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String cannot fail");
    }
    out.push_str("];\n");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&out_dir).join("migrations.rs"), out).expect("OUT_DIR is writable");

    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=WARDEN_GIT_REVISION={revision}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=WARDEN_BUILD_PROFILE={profile}");
}
