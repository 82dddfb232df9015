//! One exported item as a Markdown file: YAML frontmatter between `---` lines, then a
//! Markdown body. Values are written as JSON (which is YAML), so strings are always
//! quoted, object keys come out sorted, and the same item renders to the same bytes.
//! Frontmatter is read back with the profile's own YAML reader.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::yaml;

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

/// Reads the frontmatter of `text` into `T`. Errors name the line, counted from the top
/// of the file.
pub fn frontmatter<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let Some(rest) = text.strip_prefix("---\n") else {
        return Err("line 1: expected `---` (a Markdown file with YAML frontmatter)".into());
    };
    let Some(end) = rest
        .find("\n---\n")
        .or_else(|| rest.ends_with("\n---").then(|| rest.len() - "\n---".len()))
    else {
        return Err("the frontmatter has no closing `---` line".into());
    };
    let node = yaml::parse(&rest[..=end]).map_err(|problem| shifted(problem, 1))?;
    yaml::from_node(&node).map_err(|problem| shifted(problem, 1))
}

/// A problem's message with its line moved down by the `---` line above the YAML.
fn shifted(problem: yaml::Located, lines: u32) -> String {
    let place = if problem.path.is_empty() {
        String::new()
    } else {
        format!("{}: ", problem.path)
    };
    format!(
        "line {}: {place}{}",
        problem.mark.line + lines,
        problem.message
    )
}

/// A file name for `name`: kept as it is where it is safe in every file system and in
/// git, with any other byte as `%XX` (and a leading `.`, so nothing becomes hidden).
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
    out.push_str(".md");
    out
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

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
    }
}
