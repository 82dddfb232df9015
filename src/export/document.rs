//! One exported item as a Markdown file: YAML frontmatter between `---` lines, then a
//! Markdown body. Values are written as JSON (which is YAML), so strings are always
//! quoted, object keys come out sorted, and the same item renders to the same bytes.
//! Frontmatter is read back with the profile's own YAML reader
//! ([`crate::config::yaml::frontmatter`]).

use serde_json::Value;

/// An item: its frontmatter fields in the order they are written, and its body.
pub struct Document {
    pub fields: Vec<(&'static str, Value)>,
    pub body: String,
}

impl Document {
    pub fn render(&self) -> String {
        let mut text = String::from("---\n");
        for (key, value) in &self.fields {
            text.push_str(key);
            text.push_str(": ");
            // A `Value` always serialises; the fallback is never taken.
            text.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
            text.push('\n');
        }
        text.push_str("---\n");
        text.push_str(&self.body);
        text
    }
}

/// The longest file name written (file systems allow 255 bytes).
const MAX_FILE_NAME: usize = 200;

/// A file name for `name`: kept as it is where it is safe in every file system and in
/// git, with any other byte as `%XX` (and a leading `.`, so nothing becomes hidden). A
/// name that would make a file name longer than [`MAX_FILE_NAME`] is cut and given the
/// start of its SHA-256, so distinct names keep distinct files (the name itself is in
/// the frontmatter).
pub fn file_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 3);
    for (i, byte) in name.bytes().enumerate() {
        let safe = byte.is_ascii_alphanumeric()
            || matches!(byte, b'_' | b'-' | b'@')
            || (byte == b'.' && i > 0);
        if safe {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.len() + ".md".len() > MAX_FILE_NAME {
        // Every escape is ASCII, so any byte index is a character boundary.
        let digest = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(name.as_bytes())[..8]);
        out.truncate(MAX_FILE_NAME - ".md".len() - digest.len() - 1);
        // Do not leave half an escape at the cut.
        if let Some(at) = out.rfind('%')
            && out.len() - at < 3
        {
            out.truncate(at);
        }
        out.push('~');
        out.push_str(&digest);
    }
    out.push_str(".md");
    out
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::config::yaml::frontmatter;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Item {
        name: String,
        roles: Vec<String>,
        disabled: bool,
        keys: Vec<Value>,
    }

    #[test]
    fn a_document_reads_back_what_it_wrote() {
        let document = Document {
            fields: vec![
                ("name", json!("a \"quoted\" name: with colon")),
                ("roles", json!(["admin", "développeur"])),
                ("disabled", json!(false)),
                ("keys", json!([{"scopes": "x y", "prefix": "wk_1"}])),
            ],
            body: "# Body\n".into(),
        };
        let text = document.render();
        assert_eq!(
            text,
            "---\nname: \"a \\\"quoted\\\" name: with colon\"\nroles: [\"admin\",\"développeur\"]\ndisabled: false\nkeys: [{\"prefix\":\"wk_1\",\"scopes\":\"x y\"}]\n---\n# Body\n"
        );
        let item: Item = frontmatter(&text).unwrap();
        assert_eq!(
            item,
            Item {
                name: "a \"quoted\" name: with colon".into(),
                roles: vec!["admin".into(), "développeur".into()],
                disabled: false,
                keys: vec![json!({"prefix": "wk_1", "scopes": "x y"})],
            }
        );
    }

    #[test]
    fn a_bad_frontmatter_names_its_line() {
        let error = frontmatter::<Item>("---\nname: x\nroles: [a\n---\n").unwrap_err();
        assert!(
            error.starts_with("line 3") || error.starts_with("line 4"),
            "{error}"
        );
        let error =
            frontmatter::<Item>("---\nname: x\nroles: []\ndisabled: maybe\nkeys: []\n---\n")
                .unwrap_err();
        assert!(error.starts_with("line 4: disabled"), "{error}");
        assert!(frontmatter::<Item>("# no frontmatter\n").is_err());
        assert!(frontmatter::<Item>("---\nname: x\n").is_err());
    }

    #[test]
    fn file_names_keep_safe_names_and_encode_the_rest() {
        assert_eq!(file_name("alice@example.com"), "alice@example.com.md");
        assert_eq!(file_name("read_file"), "read_file.md");
        assert_eq!(file_name(".hidden"), "%2Ehidden.md");
        assert_eq!(file_name("../x|y z"), "%2E.%2Fx%7Cy%20z.md");
        assert_eq!(file_name("é"), "%C3%A9.md");

        // Long names are cut, marked with their hash, and never end in half an escape.
        let long_a = format!("{}a", "x|".repeat(200));
        let long_b = format!("{}b", "x|".repeat(200));
        let (a, b) = (file_name(&long_a), file_name(&long_b));
        assert!(a.len() <= MAX_FILE_NAME && b.len() <= MAX_FILE_NAME, "{a}");
        assert_ne!(a, b);
        let stem = a.strip_suffix(".md").unwrap();
        let (cut, digest) = stem.rsplit_once('~').unwrap();
        assert_eq!(digest.len(), 16);
        assert!(cut.ends_with('x') || cut.ends_with("%7C"), "{cut}");
    }
}
