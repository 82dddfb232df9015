//! Cheap structural checks on a request body before it is parsed: JSON nested deeper
//! than `server.max_json_depth` is refused by a byte scan, so a hostile body cannot make
//! the parser recurse (or allocate) its way through thousands of levels.

/// The maximum nesting depth of arrays and objects in `body`, scanning bytes and
/// skipping strings. Stops early once `limit` is exceeded.
pub fn exceeds_depth(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_containers_outside_strings() {
        assert!(!exceeds_depth(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(exceeds_depth(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(!exceeds_depth(br#"{"a":"[[[[[[[[[[\"]]]"}"#, 1));
        let deep = "[".repeat(10_000);
        assert!(exceeds_depth(deep.as_bytes(), 64));
    }
}
