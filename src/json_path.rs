//! The path (`routes[0].match.path_prefix`) of the JSON value at a byte offset.
//!
//! serde_json reports where in the document it stopped (line and column), not which field
//! it was reading. A config that is not JSON, or repeats a name, must still be answered
//! with a field, so `at_offset` rescans the document up to that point and returns the
//! path of the key or value being read there.

/// One open container on the way to the offset.
enum Frame {
    /// An object and the key whose value is being read, if one has been read.
    Object(Option<String>),
    /// An array, the index of the current element, and whether that element has begun.
    Array(usize, bool),
}

/// The path of the key or value serde_json stood at, `offset` bytes into `doc`: keys
/// joined by `.`, array indices as `[i]`; empty at the top level. The document is the one
/// serde_json failed on, so it may be cut short or malformed after `offset`; before
/// `offset` it is what serde_json had accepted.
pub fn at_offset(doc: &[u8], offset: usize) -> String {
    render(&scan(doc, offset))
}

/// The containers open at `offset`.
fn scan(doc: &[u8], offset: usize) -> Vec<Frame> {
    let end = offset.min(doc.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        let Some(&b) = doc.get(i) else { break };
        match b {
            b'{' => {
                begin_value(&mut stack);
                stack.push(Frame::Object(None));
            }
            b'[' => {
                begin_value(&mut stack);
                stack.push(Frame::Array(0, false));
            }
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object(key)) => *key = None,
                Some(Frame::Array(index, begun)) => {
                    *index += 1;
                    *begun = false;
                }
                None => {}
            },
            b'"' => {
                let (text, next) = string_at(doc, i + 1, end);
                match stack.last_mut() {
                    Some(Frame::Object(key)) if key.is_none() => *key = Some(text),
                    _ => begin_value(&mut stack),
                }
                i = next;
                continue;
            }
            b if b.is_ascii_whitespace() || b == b':' => {}
            _ => begin_value(&mut stack),
        }
        i += 1;
    }
    // serde_json reports a wrong type at the value's first byte, before reading it: an
    // array element that starts there is the one at fault.
    let next = doc
        .get(end..)
        .and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()));
    if let (Some(Frame::Array(_, begun)), Some(b)) = (stack.last_mut(), next) {
        if *b != b']' && *b != b',' {
            *begun = true;
        }
    }
    stack
}

/// A value starts in the innermost container: in an array it is the current element.
fn begin_value(stack: &mut [Frame]) {
    if let Some(Frame::Array(_, begun)) = stack.last_mut() {
        *begun = true;
    }
}

/// The string whose opening quote is just before `start`, and the index after its closing
/// quote (or `end`). Escapes are kept as written, except `\"` and `\\`: config keys are
/// plain names.
fn string_at(doc: &[u8], start: usize, end: usize) -> (String, usize) {
    let mut text = Vec::new();
    let mut i = start;
    while i < end {
        match doc.get(i) {
            Some(b'"') => return (String::from_utf8_lossy(&text).into_owned(), i + 1),
            Some(b'\\') => {
                if let Some(&c) = doc.get(i + 1) {
                    if c != b'"' && c != b'\\' {
                        text.push(b'\\');
                    }
                    text.push(c);
                }
                i += 2;
            }
            Some(&c) => {
                text.push(c);
                i += 1;
            }
            None => break,
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), end)
}

fn render(stack: &[Frame]) -> String {
    let mut path = String::new();
    for frame in stack {
        match frame {
            Frame::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Array(index, true) => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
            _ => {}
        }
    }
    path
}

/// The byte offset of serde_json's one-based `line` and `column` (bytes within the line)
/// in `doc`; 0 when the error has no position.
pub fn offset_of(doc: &[u8], line: usize, column: usize) -> usize {
    let line_start = match line {
        0 => return 0,
        1 => 0,
        // Just after the newline that ends line `line - 1`.
        _ => doc
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(line - 2)
            .map_or(doc.len(), |(i, _)| i + 1),
    };
    line_start.saturating_add(column).min(doc.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(doc: &str, before: &str) -> String {
        let offset = doc.find(before).expect("marker in doc") + before.len();
        at_offset(doc.as_bytes(), offset)
    }

    #[test]
    fn keys_and_indices_on_the_way_to_the_offset() {
        let doc = r#"{"routes": [{"name": "a"}, {"require": {"any": [{"claim": 5}]}}]}"#;
        assert_eq!(
            path_of(doc, r#""claim": 5"#),
            "routes[1].require.any[0].claim"
        );
        assert_eq!(path_of(doc, r#""name""#), "routes[0].name");
        assert_eq!(path_of(doc, r#""name": "a"}"#), "routes[0]");
        assert_eq!(path_of(doc, r#"{"routes""#), "routes");
        assert_eq!(at_offset(doc.as_bytes(), 0), "");
        // Just before an element's first byte: that element.
        let at = doc.find("{\"require\"").expect("marker");
        assert_eq!(at_offset(doc.as_bytes(), at), "routes[1]");
    }

    #[test]
    fn a_string_holding_brackets_and_escaped_quotes_is_one_value() {
        let doc = r#"{"a": "x\"}],{[", "b": [1, 2, true]}"#;
        assert_eq!(path_of(doc, "2, true"), "b[2]");
        assert_eq!(path_of(doc, r#"{[""#), "a");
    }

    #[test]
    fn offsets_count_bytes_from_the_line_start() {
        let doc = b"{\n  \"a\": 1,\n  \"b\": x\n}";
        let off = offset_of(doc, 3, 8);
        assert_eq!(doc.get(off - 1), Some(&b'x'));
        assert_eq!(offset_of(doc, 1, 1), 1);
        assert_eq!(offset_of(doc, 0, 0), 0);
        assert_eq!(offset_of(doc, 99, 99), doc.len());
    }
}
