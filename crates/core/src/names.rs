//! Naming rules of BigQuery, S3 and ferry itself. Each check returns what is wrong in words an
//! analyst can act on, or `Ok`.

/// Prefix of the columns ferry adds to every loaded row; source columns may not use it.
pub const METADATA_PREFIX: &str = "_ferry_";

/// A Google Cloud project id: 6-30 characters, lowercase letters, digits and hyphens, starting
/// with a letter and not ending with a hyphen; optionally `domain.example:` scoped.
pub fn check_project(id: &str) -> Result<(), String> {
    let bare = match id.rsplit_once(':') {
        Some((domain, bare))
            if !domain.is_empty()
                && domain.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                }) =>
        {
            bare
        }
        Some(_) => {
            return Err(
                "the domain before ':' may hold only lowercase letters, digits, '.' and '-'".into(),
            );
        }
        None => id,
    };
    if !(6..=30).contains(&bare.len()) {
        return Err(format!(
            "a project id has 6 to 30 characters, this one has {}",
            bare.len()
        ));
    }
    if !bare
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("a project id holds only lowercase letters, digits and '-'".into());
    }
    if !bare.starts_with(|c: char| c.is_ascii_lowercase()) || bare.ends_with('-') {
        return Err("a project id starts with a letter and does not end with '-'".into());
    }
    Ok(())
}

/// A BigQuery dataset id: 1-1,024 letters, digits and underscores.
pub fn check_dataset(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 1024 {
        return Err("a dataset name has 1 to 1,024 characters".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "a dataset name holds only letters, digits and '_', not {c:?}"
        ));
    }
    Ok(())
}

/// A BigQuery table id as ferry allows it: 1-1,024 bytes of letters, digits (any script), `_`
/// and `-`. BigQuery also allows spaces and some punctuation; ferry does not, so that every
/// table can be named in SQL without quoting mistakes.
pub fn check_table(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 1024 {
        return Err("a table name has 1 to 1,024 bytes".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "a table name holds only letters, digits, '_' and '-', not {c:?}"
        ));
    }
    Ok(())
}

/// A BigQuery column name: letters, digits and underscores, starting with a letter or
/// underscore, at most 300 characters, not one of BigQuery's reserved prefixes, and not ferry's.
pub fn check_column(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 300 {
        return Err("a column name has 1 to 300 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "a BigQuery column name holds only letters, digits and '_', not {c:?}"
        ));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a column name starts with a letter or '_'".into());
    }
    let upper = name.to_ascii_uppercase();
    for reserved in [
        "_TABLE_",
        "_FILE_",
        "_PARTITION",
        "_ROW_TIMESTAMP",
        "__ROOT__",
        "_COLON_",
    ] {
        if upper.starts_with(reserved) {
            return Err(format!("BigQuery reserves the column prefix {reserved}"));
        }
    }
    if upper.starts_with(&METADATA_PREFIX.to_ascii_uppercase()) {
        return Err(format!(
            "the prefix {METADATA_PREFIX} is reserved for ferry's metadata columns"
        ));
    }
    Ok(())
}

/// An S3 bucket name (general purpose buckets): 3-63 characters of lowercase letters, digits,
/// `.` and `-`, starting and ending with a letter or digit.
pub fn check_bucket(name: &str) -> Result<(), String> {
    if !(3..=63).contains(&name.len()) {
        return Err("a bucket name has 3 to 63 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("a bucket name holds only lowercase letters, digits, '.' and '-'".into());
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return Err("a bucket name starts and ends with a letter or digit".into());
    }
    if name.contains("..") {
        return Err("a bucket name has no two adjacent dots".into());
    }
    Ok(())
}

/// A DMS bucket folder: `/`-separated segments of S3's "safe characters" (letters, digits and
/// `! - _ . * ' ( )` less `*`; page "Naming Amazon S3 objects"), no `.` or `..` segment. The
/// folder reaches IAM policy ARNs and the Serverless variable resolver, so `$ { } * ? [ ]` and
/// the like must never pass.
pub fn check_folder(folder: &str) -> Result<(), String> {
    if folder.len() > 512 {
        return Err("a bucket folder has at most 512 characters".into());
    }
    for segment in folder.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(format!("the bucket folder has a {segment:?} segment"));
        }
        if let Some(c) = segment.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '!' | '-' | '_' | '.' | '\'' | '(' | ')'))
        }) {
            return Err(format!(
                "the bucket folder holds {c:?}; only letters, digits and ! - _ . ' ( ) are allowed (it becomes part of IAM policy ARNs and deployment files)"
            ));
        }
    }
    Ok(())
}

/// A name as a literal in a DMS selection rule's `object-locator`, where `%` matches any run of
/// characters, `_` any one character and `[...]` a character class: each of the three is written
/// as a one-character class (`[_]`, `[%]`, `[[]`), so that a rule selects exactly the table named.
pub fn dms_literal(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '_' | '%' | '[' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            c => out.push(c),
        }
    }
    out
}

/// A ferry source name: 1-63 lowercase letters, digits and `-`, starting with a letter.
pub fn check_source_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(
            "a source name has 1 to 63 lowercase letters, digits and '-', starting with a letter"
                .into(),
        )
    }
}

/// A MySQL schema or table name as DMS writes it into a key: 1-64 characters, no `/`.
pub fn check_mysql_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 64 {
        return Err("a MySQL schema or table name has 1 to 64 characters".into());
    }
    if name.contains('/') {
        return Err("a MySQL schema or table name cannot contain '/'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects() {
        for ok in [
            "acme-analytics",
            "abcdef",
            "example.com:acme-prod",
            "a2345678901234567890123456789z",
        ] {
            assert_eq!(check_project(ok), Ok(()), "{ok}");
        }
        for bad in [
            "abc",
            "Acme-analytics",
            "1acme-analytics",
            "acme-analytics-",
            "acme_analytics",
            ":acme-analytics",
        ] {
            assert!(check_project(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datasets_tables_columns() {
        assert!(check_dataset("slots_eu").is_ok());
        assert!(check_dataset("slots-eu").is_err());
        assert!(check_dataset("").is_err());
        assert!(check_table("players").is_ok());
        assert!(check_table("플레이어_2024-01").is_ok());
        assert!(check_table("my table").is_err());
        assert!(check_table(&"t".repeat(1025)).is_err());
        assert!(check_column("player_id").is_ok());
        assert!(check_column("_dms_ts").is_ok());
        for bad in [
            "1st",
            "player id",
            "_PARTITIONTIME",
            "_ferry_op",
            "_FERRY_op",
            "é",
            "",
        ] {
            assert!(check_column(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_and_sources() {
        assert!(check_bucket("acme-dms.cdc").is_ok());
        for bad in ["ab", "Acme", "-acme", "acme-", "a..b", "acme_dms"] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
        assert!(check_source_name("slots-eu-1").is_ok());
        for bad in ["", "Slots", "1slots", "slots_eu"] {
            assert!(check_source_name(bad).is_err(), "{bad}");
        }
        assert!(check_mysql_identifier("my table 😊").is_ok());
        assert!(check_mysql_identifier("a/b").is_err());
        assert!(check_mysql_identifier(&"x".repeat(65)).is_err());
    }
}
