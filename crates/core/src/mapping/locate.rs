//! Where a problem's JSON path points in a mapping file's text, as a 1-based line and column,
//! for editors and GitHub annotations. A path that leads to nothing (a missing member) points
//! at the deepest member on the way that exists.

#[derive(Debug, PartialEq)]
enum PathSeg {
    Key(String),
    Index(usize),
}

/// Parses `$.source.name`, `$.tables["a.b"].columns[0]`.
fn parse_path(path: &str) -> Option<Vec<PathSeg>> {
    let mut rest = path.strip_prefix('$')?;
    let mut segs = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            segs.push(PathSeg::Key(r[..end].to_owned()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("[\"") {
            let end = string_end(r.as_bytes(), 0)?;
            let key: String = serde_json::from_str(&rest[1..end + 3]).ok()?;
            segs.push(PathSeg::Key(key));
            rest = r[end + 1..].strip_prefix(']')?;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            segs.push(PathSeg::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(segs)
}

/// The index of the closing quote of a string whose content starts at `i`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index just past the JSON value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i + 1).map(|e| e + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => j = string_end(b, j + 1)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace()
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Line and column (1-based, columns in characters) of `path` in `text`.
pub(crate) fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let at = find(text, path)?.0;
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, col))
}

/// `text` without the member or element at `path` (and one comma beside it), so that the rest
/// can be parsed again; `None` when the path does not lead to one (or leads to the root).
pub(crate) fn without(text: &str, path: &str) -> Option<String> {
    let (start, end, exact) = find(text, path)?;
    if !exact || start == 0 {
        return None;
    }
    let b = text.as_bytes();
    let after = skip_ws(b, end);
    let (start, end) = if b.get(after) == Some(&b',') {
        (start, after + 1)
    } else {
        // The last member: take the comma before it.
        let mut j = start;
        while j > 0 && b[j - 1].is_ascii_whitespace() {
            j -= 1;
        }
        if j > 0 && b[j - 1] == b',' {
            (j - 1, end)
        } else {
            (start, end)
        }
    };
    Some(format!("{}{}", &text[..start], &text[end..]))
}

/// Where `path` leads: the start of the member (its key) or element, the end of its value,
/// and whether the whole path was found (else the deepest member found).
fn find(text: &str, path: &str) -> Option<(usize, usize, bool)> {
    let segs = parse_path(path)?;
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    let mut at = i;
    let mut found = 0;
    'path: for seg in &segs {
        match (seg, b.get(i)) {
            (PathSeg::Key(k), Some(b'{')) => {
                i += 1;
                loop {
                    i = skip_ws(b, i);
                    if b.get(i) != Some(&b'"') {
                        break 'path;
                    }
                    let key_at = i;
                    let end = string_end(b, i + 1)?;
                    let key: String = serde_json::from_str(&text[i..=end]).ok()?;
                    i = skip_ws(b, end + 1);
                    if b.get(i) != Some(&b':') {
                        break 'path;
                    }
                    i = skip_ws(b, i + 1);
                    if key == *k {
                        at = key_at;
                        found += 1;
                        continue 'path;
                    }
                    i = skip_ws(b, skip_value(b, i)?);
                    if b.get(i) == Some(&b',') {
                        i += 1;
                    }
                }
            }
            (PathSeg::Index(n), Some(b'[')) => {
                i = skip_ws(b, i + 1);
                for _ in 0..*n {
                    if matches!(b.get(i), None | Some(b']')) {
                        break 'path;
                    }
                    i = skip_ws(b, skip_value(b, i)?);
                    if b.get(i) == Some(&b',') {
                        i = skip_ws(b, i + 1);
                    }
                }
                if matches!(b.get(i), None | Some(b']')) {
                    break 'path;
                }
                at = i;
                found += 1;
            }
            _ => break,
        }
    }
    let exact = found == segs.len();
    let end = if exact { skip_value(b, i)? } else { at };
    Some((at, end, exact))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "{\n  \"source\": {\"name\": \"a\"},\n  \"tables\": {\n    \"db.t\": {\"primary_key\": [\"id\", \"x\"], \"mode\": \"replica\"}\n  }\n}\n";

    #[test]
    fn paths_parse_with_quoted_members_and_indexes() {
        assert_eq!(
            parse_path("$.tables[\"db.t\"].primary_key[1]").unwrap(),
            vec![
                PathSeg::Key("tables".into()),
                PathSeg::Key("db.t".into()),
                PathSeg::Key("primary_key".into()),
                PathSeg::Index(1)
            ]
        );
        assert!(parse_path("tables").is_none());
    }

    #[test]
    fn members_and_elements_are_found_by_line_and_column() {
        assert_eq!(locate(TEXT, "$"), Some((1, 1)));
        assert_eq!(locate(TEXT, "$.source.name"), Some((2, 14)));
        assert_eq!(locate(TEXT, "$.tables[\"db.t\"]"), Some((4, 5)));
        assert_eq!(locate(TEXT, "$.tables[\"db.t\"].mode"), Some((4, 42)));
        assert_eq!(
            locate(TEXT, "$.tables[\"db.t\"].primary_key[1]"),
            Some((4, 36))
        );
    }

    #[test]
    fn members_and_elements_are_cut_out_leaving_valid_json() {
        for path in [
            "$.source",
            "$.tables",
            "$.tables[\"db.t\"].mode",
            "$.tables[\"db.t\"].primary_key",
            "$.tables[\"db.t\"].primary_key[0]",
            "$.tables[\"db.t\"].primary_key[1]",
        ] {
            let cut = without(TEXT, path).unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&cut).unwrap_or_else(|e| panic!("{path}: {e}\n{cut}"));
            assert!(
                v.pointer("/tables/db.t/mode").is_some() != path.ends_with(".mode")
                    || path == "$.tables",
                "{path}"
            );
        }
        assert_eq!(without(TEXT, "$"), None);
        assert_eq!(without(TEXT, "$.tables[\"db.t\"].target"), None);
    }

    #[test]
    fn a_missing_member_points_at_the_deepest_one_that_exists() {
        assert_eq!(locate(TEXT, "$.tables[\"db.t\"].target"), Some((4, 5)));
        assert_eq!(
            locate(TEXT, "$.tables[\"db.t\"].primary_key[5]"),
            Some((4, 14))
        );
    }
}
